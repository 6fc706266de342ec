"""Many small sandboxes ticked together, as a game ticks its NPC scripts.

    python benchmarks/npc.py [--npcs 50] [--ticks 60]

Each NPC is a strict sandbox holding a script ``tick(world)`` that makes three calls
into its host capability (look, move, report) and returns. A tick calls every NPC once;
the table shows ticks per second when the host calls them one after another, with
``capbridge.gather`` (all at once, replies collected, a per-call deadline), and one
after another with the host thread and every NPC kept on one CPU
(``Sandbox(cpus="caller")`` from a pinned thread: no cross-CPU wake-ups).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import capbridge
from capbridge import Sandbox, expose

SCRIPT = """
def tick(world):
    x = world.look()
    world.move(x + 1)
    world.report("ok")
    return x
"""


class World:
    def __init__(self) -> None:
        self.x = 0
        self.reports = 0

    @expose
    def look(self) -> int:
        return self.x

    @expose
    def move(self, x: int) -> None:
        self.x = x

    @expose
    def report(self, what: str) -> None:
        self.reports += 1


def _ticks(step, ticks: int) -> list[float]:
    step()  # warm
    times = []
    for _ in range(ticks):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times


def _npcs(npcs: int, **kwargs) -> tuple[list, list, list]:
    worlds = [World() for _ in range(npcs)]
    boxes = [Sandbox({"world": w}, **kwargs) for w in worlds]
    scripts = [sb.load(SCRIPT, "npc") for sb in boxes]
    handles = [(s.tick, sb.eval("world")) for s, sb in zip(scripts, boxes)]
    return worlds, boxes, handles


def run(npcs: int, ticks: int) -> dict:
    """Ticks as the kernel places the processes (one after another, then gathered),
    and one after another with the host thread and every NPC on one CPU (``cpus=``)."""
    out = {}
    worlds, boxes, handles = _npcs(npcs)
    try:
        out["one after another"] = _ticks(lambda: [tick(world) for tick, world in handles], ticks)
        out["capbridge.gather"] = _ticks(lambda: capbridge.gather(handles, timeout=1.0), ticks)
        assert all(w.reports == 2 * (ticks + 1) for w in worlds)
    finally:
        for sb in boxes:
            sb.close()
    mine = os.sched_getaffinity(0)
    cpu = min(mine)
    os.sched_setaffinity(0, {cpu})  # this thread only, for this row
    try:
        worlds, boxes, handles = _npcs(npcs, cpus="caller")
        try:
            out["one after another, one CPU"] = _ticks(lambda: [tick(world) for tick, world in handles], ticks)
            assert all(w.reports == ticks + 1 for w in worlds)
        finally:
            for sb in boxes:
                sb.close()
    finally:
        os.sched_setaffinity(0, mine)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--npcs", type=int, default=50)
    ap.add_argument("--ticks", type=int, default=60)
    opts = ap.parse_args(argv)
    res = run(opts.npcs, opts.ticks)
    print(f"{opts.npcs} NPC sandboxes (strict), one tick = one call into each, making 3 host calls")
    print(f"{'':26} {'ticks/s':>8} {'median ms':>10} {'p90 ms':>8}")
    for label, times in res.items():
        med = statistics.median(times)
        p90 = sorted(times)[int(0.9 * (len(times) - 1))]
        print(f"{label:26} {1 / med:8.1f} {med * 1e3:10.2f} {p90 * 1e3:8.2f}")
    print("target: >= 100 ticks/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
