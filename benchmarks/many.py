"""Calls into many busy sandboxes at once, beside calls into one.

    python benchmarks/many.py [--counts 1,64,200] [--seconds 3]

N strict sandboxes each run a small module whose ``f(1)`` is a plain call and whose
``cb()`` calls back into the host once. Two ways to keep them all busy for a few
seconds: *threads*, N host threads each calling its own sandbox in a loop (what an
application does without help), and *gather*, one host thread calling all N at once
with ``capbridge.gather``, round after round. The table gives the calls per second
of all of them together and the cost of one call per core (wall time x cores /
calls), beside the same figure for one sandbox called in a loop on one thread: what
grows with the number of sandboxes.
"""

from __future__ import annotations

import argparse
import os
import pickle
import select
import struct
import sys
import threading
import time

import capbridge
from capbridge import Limits, Sandbox, expose

MODULE = """
def f(x):
    return x + 1

def cb():
    return calc.add(1, 2)
"""


_LEN = struct.Struct("!I")


def _child(rfd: int, wfd: int) -> None:
    loads, dumps, read, write = pickle.loads, pickle.dumps, os.read, os.write
    while True:
        head = read(rfd, 65536)
        if not head:
            os._exit(0)
        op, x = loads(head[4:])
        if op == "cb":
            body = dumps(("add", 1, 2))
            write(wfd, _LEN.pack(len(body)) + body)
            got = read(rfd, 65536)
            x = loads(got[4:])
        body = dumps(("ret", x + 1))
        write(wfd, _LEN.pack(len(body)) + body)


class RawFan:
    """N forked children answering pickled requests over pipes; one thread fans out."""

    def __init__(self, count: int) -> None:
        self.kids = []
        for _ in range(count):
            a_r, a_w = os.pipe()
            b_r, b_w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(a_w)
                os.close(b_r)
                try:
                    _child(a_r, b_w)
                finally:
                    os._exit(0)
            os.close(a_r)
            os.close(b_w)
            self.kids.append((pid, a_w, b_r))
        self.ep = select.epoll()
        self.by_fd = {}
        for pid, w, r in self.kids:
            self.ep.register(r, select.EPOLLIN)
            self.by_fd[r] = w

    def round(self, op: str) -> int:
        """One request to every child; returns when all have answered."""
        body = pickle.dumps((op, 1))
        frame = _LEN.pack(len(body)) + body
        for _, w, _ in self.kids:
            os.write(w, frame)
        left = len(self.kids)
        loads, read, write = pickle.loads, os.read, os.write
        while left:
            for fd, _ in self.ep.poll():
                msg = loads(read(fd, 65536)[4:])
                if msg[0] == "add":
                    body = pickle.dumps(msg[1] + msg[2])
                    write(self.by_fd[fd], _LEN.pack(len(body)) + body)
                else:
                    left -= 1
        return len(self.kids)

    def close(self) -> None:
        for pid, w, r in self.kids:
            os.close(w)
            os.close(r)
        for pid, _, _ in self.kids:
            os.waitpid(pid, 0)
        self.ep.close()


def run_raw(count: int, kind: str, seconds: float) -> tuple[float, float]:
    """(calls per second in all, µs per call per core) for the hand-written fan-out."""
    fan = RawFan(count)
    try:
        op = "f" if kind == "f" else "cb"
        fan.round(op)
        cores = len(os.sched_getaffinity(0))
        total = 0
        t0 = time.perf_counter()
        end = t0 + seconds
        while time.perf_counter() < end:
            total += fan.round(op)
        wall = time.perf_counter() - t0
        return total / wall, wall * cores / total * 1e6
    finally:
        fan.close()


class Calc:
    @expose
    def add(self, a: int, b: int) -> int:
        return a + b


def run(count: int, kind: str, seconds: float, how: str = "threads") -> tuple[float, float]:
    """(calls per second in all, µs per call per core)."""
    boxes = [Sandbox({"calc": Calc()}, limits=Limits(cpu_seconds=None, memory_mb=256)) for _ in range(count)]
    try:
        fns = [getattr(sb.load(MODULE, "m"), kind) for sb in boxes]
        for fn in fns:
            fn(1) if kind == "f" else fn()
        cores = len(os.sched_getaffinity(0))
        if how == "gather":
            calls = [(fn, 1) for fn in fns] if kind == "f" else fns
            rounds = 0
            t0 = time.perf_counter()
            end = t0 + seconds
            while time.perf_counter() < end:
                capbridge.gather(calls)
                rounds += 1
            wall = time.perf_counter() - t0
            total = rounds * count
            return total / wall, wall * cores / total * 1e6
        counts = [0] * count
        stop = threading.Event()
        start = threading.Barrier(count + 1)

        def work(i: int) -> None:
            fn = fns[i]
            start.wait()
            n = 0
            if kind == "f":
                while not stop.is_set():
                    fn(1)
                    n += 1
            else:
                while not stop.is_set():
                    fn()
                    n += 1
            counts[i] = n

        threads = [threading.Thread(target=work, args=(i,)) for i in range(count)]
        for t in threads:
            t.start()
        start.wait()
        t0 = time.perf_counter()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        total = sum(counts)
        return total / wall, wall * cores / total * 1e6
    finally:
        for sb in boxes:
            sb.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", default="1,64,200")
    ap.add_argument("--seconds", type=float, default=3.0)
    opts = ap.parse_args(argv)
    counts = [int(c) for c in opts.counts.split(",")]
    print(f"cores: {len(os.sched_getaffinity(0))}; each row runs {opts.seconds:g} s, strict sandboxes")
    print(f"{'sandboxes':>9}  {'call':<7} {'driven by':<9} {'calls/s':>9} {'µs/call/core':>13} {'x one':>6} {'x raw':>6}")
    for kind, label in (("f", "plain"), ("cb", "nested")):
        base = None
        raw_runs = {n: run_raw(n, kind, opts.seconds) for n in counts}
        raw = {n: r[1] for n, r in raw_runs.items()}
        for how in ("threads", "gather", "raw"):
            for n in counts:
                if n == 1 and how == "gather":
                    continue
                rate, per = raw_runs[n] if how == "raw" else run(n, kind, opts.seconds, how)
                base = per if base is None else base
                print(f"{n:>9}  {label:<7} {how:<9} {rate:9.0f} {per:13.1f} {per / base:5.2f}x {per / raw[n]:5.2f}x")
    print("target: <= 1.5x of one sandbox, per core; raw = the hand-written fan-out")
    return 0


if __name__ == "__main__":
    sys.exit(main())
