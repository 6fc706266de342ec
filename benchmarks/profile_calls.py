#!/usr/bin/env python3
"""cProfile of capbridge's call path, host side and sandbox side.

    python benchmarks/profile_calls.py [--calls 20000] [--top 25] [--confinement strict]
        [--which h2s,s2h,cb] [--sort tottime]

For each kind of call (h2s: host calls a sandbox function; s2h: sandbox code calls a
host capability in a loop; cb: host calls a sandbox function that calls back) it
profiles the host process around the loop, and the sandbox process too (cProfile runs
inside the sandbox, its report comes back as text). Both processes are pinned to the
same CPU. Profiling inflates small functions; read the ranking, not the absolute times.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
warnings.filterwarnings("ignore", message=".*confinement='none'.*")

from run import SANDBOX_MODULE, PickleLoop, _make_calc, pin_pid  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """utime + stime of ``pid`` in seconds (clock-tick resolution)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def cpu_split(run, n: int, peer_pid: int) -> tuple[float, float, float]:
    """(wall, host CPU, peer CPU) seconds per call of ``run()`` doing ``n`` calls."""
    h0, p0, t0 = proc_cpu(os.getpid()), proc_cpu(peer_pid), time.perf_counter()
    run()
    t1, h1, p1 = time.perf_counter(), proc_cpu(os.getpid()), proc_cpu(peer_pid)
    return (t1 - t0) / n, (h1 - h0) / n, (p1 - p0) / n


def micro(n: int = 100000) -> None:
    """In-process cost of each encode and decode step of one small call, both ways."""
    import pickle
    import timeit

    from capbridge._host_session import HostSession
    from capbridge._protocol import Op, Tag
    from capbridge._sandbox_session import SandboxSession

    host, sand = HostSession(), SandboxSession()
    call = (int(Tag.CALL), 7, 0, 1, int(Op.CALL), "add", (1, 2), {})
    ret = (int(Tag.RETURN), 7, 3)
    s_call, h_ret = sand.encode_plain(call), host.encode_plain(ret)
    h_call, s_ret = host.encode_plain(call), sand.encode_plain(ret)
    rows = [
        ("sandbox encode_plain(CALL)", lambda: sand.encode_plain(call)),
        ("host decode(CALL)  [checked]", lambda: host.decode(s_call)),
        ("host encode_plain(RETURN)", lambda: host.encode_plain(ret)),
        ("sandbox decode(RETURN)", lambda: sand.decode(h_ret)),
        ("host encode_plain(CALL)", lambda: host.encode_plain(call)),
        ("sandbox decode(CALL)", lambda: sand.decode(h_call)),
        ("sandbox encode_plain(RETURN)", lambda: sand.encode_plain(ret)),
        ("host decode(RETURN)  [checked]", lambda: host.decode(s_ret)),
        ("pickle.dumps(CALL tuple, 5) alone", lambda: pickle.dumps(call, 5)),
        ("pickle.loads(that) alone", lambda b=pickle.dumps(call, 5): pickle.loads(b)),
    ]
    print(f"\nmicro costs, in-process, {len(s_call)}-byte CALL body (best of 5 x {n}):")
    for label, fn in rows:
        best = min(timeit.repeat(fn, number=n, repeat=5)) / n
        print(f"  {label:42s} {best * 1e6:6.2f} µs")


SANDBOX_PROFILER = '''
import cProfile as _cp, io as _io, pstats as _ps
_prof = None

def prof_start():
    global _prof
    _prof = _cp.Profile()
    _prof.enable()

def prof_stop(sort, top):
    _prof.disable()
    out = _io.StringIO()
    _ps.Stats(_prof, stream=out).strip_dirs().sort_stats(sort).print_stats(top)
    return out.getvalue()
'''


def report(prof: cProfile.Profile, sort: str, top: int) -> str:
    out = io.StringIO()
    pstats.Stats(prof, stream=out).strip_dirs().sort_stats(sort).print_stats(top)
    return out.getvalue()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--sort", default="tottime")
    ap.add_argument("--confinement", default="strict")
    ap.add_argument("--which", default="h2s,s2h,cb")
    ap.add_argument("--no-micro", action="store_true", help="skip the in-process micro costs")
    ap.add_argument("--host-only", action="store_true", help="skip the in-sandbox profile")
    args = ap.parse_args(argv)

    from capbridge import Limits, Sandbox

    cpu = sorted(os.sched_getaffinity(0))[0]
    os.sched_setaffinity(0, {cpu})
    sb = Sandbox(grants={"calc": _make_calc()}, confinement=args.confinement,
                 limits=Limits(memory_mb=1024, cpu_seconds=None, wall_seconds=300))
    try:
        pin_pid(0, cpu)
        pin_pid(sb.pid, cpu)
        mod = sb.load(SANDBOX_MODULE + SANDBOX_PROFILER, name="benchmod")
        f, cb, loop = mod.f, mod.cb, mod.loop
        start, stop = mod.prof_start, mod.prof_stop
        n = args.calls
        base = PickleLoop(cpu, cpu)
        try:
            baseline = {}
            for which, fn in (("h2s", lambda: base.h2s(n)), ("s2h", lambda: base.s2h(n)), ("cb", lambda: base.cb(n))):
                fn()
                baseline[which] = cpu_split(fn, n, base.proc.pid)
        finally:
            base.close()
        for which in args.which.split(","):
            if which == "h2s":
                run = lambda: [f(1) for _ in range(n)]  # noqa: E731
                label = f"host -> sandbox: {n} x f(1)"
            elif which == "s2h":
                run = lambda: loop(n)  # noqa: E731
                label = f"sandbox -> host: loop of {n} x calc.add(1, 2) (host serves)"
            elif which == "cb":
                run = lambda: [cb() for _ in range(n)]  # noqa: E731
                label = f"callback: {n} x cb() -> calc.add(1, 2)"
            else:
                raise SystemExit(f"unknown --which {which!r}")
            run()  # warm-up
            wall, hcpu, scpu = cpu_split(run, n, sb.pid)
            plain = wall
            bw, bh, bp = baseline[which]
            if not args.host_only:
                start()
            prof = cProfile.Profile()
            prof.enable()
            run()
            prof.disable()
            print(f"\n{'=' * 100}\n{label}\n{'=' * 100}")
            print(f"unprofiled, per call: capbridge wall {plain * 1e6:.1f} µs, host CPU {hcpu * 1e6:.1f} µs, "
                  f"sandbox CPU {scpu * 1e6:.1f} µs")
            print(f"                      pickle loop wall {bw * 1e6:.1f} µs, host CPU {bh * 1e6:.1f} µs, "
                  f"peer CPU {bp * 1e6:.1f} µs")
            print("--- HOST side ---")
            print(report(prof, args.sort, args.top))
            if not args.host_only:
                print("--- SANDBOX side ---")
                print(stop(args.sort, args.top))
    finally:
        sb.close()
    if not args.no_micro:
        micro()
    return 0


if __name__ == "__main__":
    sys.exit(main())
