"""Run the decoder's fuzz target for a while: ``python tests/fuzz/run.py --minutes 10``.

Needs ``pip install -e '.[fuzz]'``. New interesting inputs go to a scratch corpus
(``--work``, default a temporary directory) seeded from ``tests/fuzz/corpus``; the
summary line says how many inputs ran. Findings are written as ``crash-*`` files in
the current directory.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--work", help="corpus directory to grow (default: a temporary copy)")
    ap.add_argument("--max-len", type=int, default=4096)
    opts = ap.parse_args()
    work = opts.work or tempfile.mkdtemp(prefix="capbridge-fuzz-")
    for name in os.listdir(os.path.join(HERE, "corpus")):
        shutil.copy(os.path.join(HERE, "corpus", name), work)
    cmd = [sys.executable, os.path.join(HERE, "fuzz_decoder.py"), work,
           f"-max_total_time={int(opts.minutes * 60)}", f"-max_len={opts.max_len}", "-print_final_stats=1"]
    print("running:", " ".join(cmd), flush=True)
    return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
