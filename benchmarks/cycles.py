#!/usr/bin/env python3
"""Sandbox cycles: how long one short-lived sandbox costs, start to finish.

    python benchmarks/cycles.py [--n 60] [--confinement strict]

* fresh: ``with Sandbox() as sb: sb.eval("1")`` with the fork server already
  running (target <= 5 ms);
* pooled: ``with pool.sandbox() as sb: sb.eval("1")`` from a ``SandboxPool`` that
  has a sandbox ready (target <= 1 ms; the pool refills between samples, untimed);
* close: ``Sandbox.close()`` alone (it does not wait for the process to be reaped).

Unpinned; median and p90 of ``--n`` samples each.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings

warnings.filterwarnings("ignore", message=".*confinement='none'.*")


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def fresh(n: int, conf: str) -> list[float]:
    from capbridge import Sandbox

    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        with Sandbox(confinement=conf) as sb:
            sb.eval("1")
        out.append(time.perf_counter() - t0)
    return out


def close_only(n: int, conf: str) -> list[float]:
    from capbridge import Sandbox

    out = []
    for _ in range(n):
        sb = Sandbox(confinement=conf)
        sb.eval("1")
        t0 = time.perf_counter()
        sb.close()
        out.append(time.perf_counter() - t0)
    return out


def pooled(n: int, conf: str, size: int = 4) -> list[float]:
    from capbridge import SandboxPool

    out = []
    with SandboxPool(size, confinement=conf) as pool:
        for _ in range(n):
            while pool.stats()["ready"] < size:  # a full pool, as between bursts
                time.sleep(0.002)
            time.sleep(0.005)  # let the filler thread go idle
            t0 = time.perf_counter()
            with pool.sandbox() as sb:
                sb.eval("1")
            out.append(time.perf_counter() - t0)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=60, help="samples per row (default 60)")
    ap.add_argument("--confinement", default="strict", choices=("strict", "best-effort", "none"))
    opts = ap.parse_args()
    from sandbox_vm import _spawn
    from capbridge import Sandbox

    _spawn.prestart()
    Sandbox(confinement=opts.confinement).close()  # warm imports and the server
    rows = [("fresh cycle", fresh(opts.n, opts.confinement), 5.0),
            ("pooled cycle", pooled(opts.n, opts.confinement), 1.0),
            ("close() alone", close_only(opts.n, opts.confinement), None)]
    print(f"## Sandbox cycles, confinement={opts.confinement!r}, n={opts.n}")
    print(f"{'cycle':<16} {'median ms':>10} {'p90 ms':>8} {'target ms':>10}")
    for name, xs, target in rows:
        med = statistics.median(xs) * 1e3
        verdict = "" if target is None else f"{'<= ' + format(target, 'g'):>10} {'OK' if med <= target else 'MISS'}"
        print(f"{name:<16} {med:>10.3f} {pct(xs, 0.9) * 1e3:>8.3f} {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
