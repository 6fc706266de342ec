"""Many small sandboxes ticked together, as a game ticks its NPC scripts.

    python benchmarks/npc.py [--npcs 50] [--ticks 60]

Each NPC is a strict sandbox holding a script ``tick(world)`` that makes three calls
into its host capability (look, move, report) and returns. A tick calls every NPC once;
the table shows ticks per second when the host calls them one after another, and with
``capbridge.gather`` (all at once, replies collected), with a per-call deadline.
"""

from __future__ import annotations

import argparse
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


def run(npcs: int, ticks: int) -> dict:
    worlds = [World() for _ in range(npcs)]
    boxes = [Sandbox({"world": w}) for w in worlds]
    try:
        scripts = [sb.load(SCRIPT, "npc") for sb in boxes]
        handles = [(s.tick, sb.eval("world")) for s, sb in zip(scripts, boxes)]
        out = {}
        for label, step in (
            ("one after another", lambda: [tick(world) for tick, world in handles]),
            ("capbridge.gather", lambda: capbridge.gather(handles, timeout=1.0)),
        ):
            step()  # warm
            times = []
            for _ in range(ticks):
                t0 = time.perf_counter()
                step()
                times.append(time.perf_counter() - t0)
            out[label] = times
        assert all(w.reports == 2 * (ticks + 1) for w in worlds)
        return out
    finally:
        for sb in boxes:
            sb.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--npcs", type=int, default=50)
    ap.add_argument("--ticks", type=int, default=60)
    opts = ap.parse_args(argv)
    res = run(opts.npcs, opts.ticks)
    print(f"{opts.npcs} NPC sandboxes (strict), one tick = one call into each, making 3 host calls")
    print(f"{'':22} {'ticks/s':>8} {'median ms':>10} {'p90 ms':>8}")
    for label, times in res.items():
        med = statistics.median(times)
        p90 = sorted(times)[int(0.9 * (len(times) - 1))]
        print(f"{label:22} {1 / med:8.1f} {med * 1e3:10.2f} {p90 * 1e3:8.2f}")
    print("target: >= 100 ticks/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
