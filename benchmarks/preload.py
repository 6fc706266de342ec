"""Packages inside a sandbox: start time with and without preload, import cost, memory.

    python benchmarks/preload.py            # numpy, pandas, pydantic; ~1 min
    python benchmarks/preload.py --n 10 --packages numpy

For each package, in one run (strict confinement, fork server warm):

* ``allow_imports``: ``Sandbox(allow_imports=(pkg,))`` then ``sb.exec("import pkg")``
  -- what every sandbox paid before preloading;
* ``preload``: ``Sandbox(preload=(pkg,))`` then the same ``exec`` (the first sandbox,
  which starts the template, is timed apart as "template start");
* the import alone, timed inside the sandbox with ``time.perf_counter``;
* USS (``Private_Clean + Private_Dirty``) of idle sandboxes, with and without preload.

Timings are medians of ``--n`` sandboxes started one after another, the three kinds
round-robin with one sandbox alive at a time (p90 beside); memory is measured on
``--idle`` sandboxes of each kind alive together.
Nothing here asserts a time; the targets are printed beside the figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from run import pct, table, uss_kb  # noqa: E402

TARGET_MS = {"numpy": 10.0, "pandas": 15.0}
TARGET_USS_MB = 8.0


def _ready_and_imported(pkg: str, **kwargs) -> tuple[float, float, object]:
    """Seconds to a started sandbox with ``import pkg`` done; the import's own seconds; the sandbox."""
    from capbridge import Sandbox

    t0 = time.perf_counter()
    sb = Sandbox(**kwargs)
    sb.exec(f"import time as _t\n_t0 = _t.perf_counter()\nimport {pkg}\n_took = _t.perf_counter() - _t0")
    total = time.perf_counter() - t0
    return total, sb.eval("_took"), sb


def measure(pkg: str, n: int, idle: int) -> dict:
    from capbridge import Sandbox

    out: dict = {"plain_s": [], "plain_import_s": [], "pre_s": [], "pre_import_s": [], "bare_s": []}
    # warm the fork server and the ruleset for this package, then time the template's start
    Sandbox().close()
    Sandbox(allow_imports=(pkg,)).close()
    t0 = time.perf_counter()
    Sandbox(preload=(pkg,)).close()
    out["template_s"] = time.perf_counter() - t0
    for _ in range(n):  # round-robin, so drift hits every row alike; one sandbox alive at a time
        total, took, sb = _ready_and_imported(pkg, allow_imports=(pkg,))
        sb.close()
        out["plain_s"].append(total)
        out["plain_import_s"].append(took)
        total, took, sb = _ready_and_imported(pkg, preload=(pkg,))
        sb.close()
        out["pre_s"].append(total)
        out["pre_import_s"].append(took)
        t0 = time.perf_counter()
        sb = Sandbox()
        sb.eval("1")
        out["bare_s"].append(time.perf_counter() - t0)
        sb.close()
    for kind, kwargs in (("plain", {"allow_imports": (pkg,)}), ("pre", {"preload": (pkg,)})):
        sbs = [_ready_and_imported(pkg, **kwargs)[2] for _ in range(idle)]
        time.sleep(0.2)
        out[f"uss_{kind}_kb"] = [uss_kb(sb.pid) for sb in sbs]
        for sb in sbs:
            sb.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20, help="sandboxes per measurement (default 20)")
    parser.add_argument("--idle", type=int, default=10, help="idle sandboxes per memory row (default 10)")
    parser.add_argument("--packages", default="numpy,pandas,pydantic")
    opts = parser.parse_args()
    import platform

    import capbridge  # noqa: F401
    from sandbox_vm import _spawn

    _spawn.prestart()
    print(f"# capbridge preload benchmark  {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"python {platform.python_version()}, Linux {platform.release()}, nproc {os.cpu_count()}, "
          f"{platform.machine()}; strict confinement; n = {opts.n} per row")
    rows_time, rows_mem = [], []
    for pkg in opts.packages.split(","):
        try:
            mod = __import__(pkg)
        except ImportError:
            print(f"{pkg}: not installed, skipped")
            continue
        m = measure(pkg, opts.n, opts.idle)
        ms = lambda xs: f"{statistics.median(xs) * 1e3:.1f}"  # noqa: E731
        p90 = lambda xs: f"{pct(xs, 0.9) * 1e3:.1f}"  # noqa: E731
        target = TARGET_MS.get(pkg)
        verdict = "" if target is None else ("ok" if statistics.median(m["pre_s"]) * 1e3 <= target else "MISS")
        rows_time.append([f"{pkg} {getattr(mod, '__version__', '')}", ms(m["bare_s"]), ms(m["plain_s"]), p90(m["plain_s"]),
                          ms(m["plain_import_s"]), ms(m["pre_s"]), p90(m["pre_s"]), f"{m['pre_import_s'][0] * 1e6:.0f} µs",
                          f"{m['template_s'] * 1e3:.0f}", f"{target:g}" if target else "-", verdict])
        mb = lambda kbs: f"{statistics.median([k for k in kbs if k]) / 1024:.1f}"  # noqa: E731
        uss_ok = statistics.median([k for k in m["uss_pre_kb"] if k]) / 1024 <= TARGET_USS_MB
        rows_mem.append([pkg, mb(m["uss_plain_kb"]), mb(m["uss_pre_kb"]), f"{TARGET_USS_MB:g}", "ok" if uss_ok else "MISS"])
    print(table(["package", "bare start ms", "allow+import ms", "p90", "import alone ms", "preload+import ms", "p90",
                 "import (preloaded)", "template start ms", "target ms", ""], rows_time,
                "Ready sandbox with `import pkg` done (median of n; bare = Sandbox() + eval, no package)"))
    print(table(["package", "USS allow_imports MB", "USS preload MB", "target MB", ""], rows_mem,
                "Memory per idle sandbox after `import pkg` (USS = Private_Clean + Private_Dirty)"))


if __name__ == "__main__":
    main()
