"""A script to run with the ``capbridge`` command line.

From the repository root::

    mkdir -p /tmp/cli_out
    capbridge run examples/cli_script.py --ro examples/cli_data:/data --rw /tmp/cli_out:/out

It reads ``/data/scores.csv`` through the virtual file system, writes a summary to
``/out/summary.txt`` and shows that nothing outside the mapped directories opens.
"""

import csv
import pathlib
import sys

with open("/data/scores.csv", newline="") as f:
    rows = list(csv.DictReader(f))
best = max(rows, key=lambda r: int(r["score"]))
mean = sum(int(r["score"]) for r in rows) / len(rows)
print(f"{len(rows)} scores, mean {mean:.1f}, best {best['name']} ({best['score']})")

try:
    with open("/etc/passwd") as f:
        print("read", len(f.read()), "bytes of /etc/passwd")
except PermissionError as exc:
    print("outside the mapped directories:", exc)

out = pathlib.Path("/out")
if out.is_dir():
    (out / "summary.txt").write_text(f"mean={mean:.1f} best={best['name']}\n")
    print("wrote /out/summary.txt")
sys.exit(0 if mean > 50 else 1)
