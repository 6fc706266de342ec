"""capbridge.gather: many sandboxes called at once from one host thread."""

from __future__ import annotations

import pytest

import capbridge
from capbridge import CallTimeout, RemoteError, expose

from conftest import make_sandbox
from hostile import FIND_CHANNEL_SRC


class Counter:
    def __init__(self) -> None:
        self.n = 0

    @expose
    def bump(self) -> int:
        self.n += 1
        return self.n


SRC = """
def work(k):
    for _ in range(3):
        c.bump()
    return k * 10

def boom():
    raise ValueError("no")

def spin():
    while True:
        pass
"""


@pytest.fixture
def boxes():
    made = []
    counters = [Counter() for _ in range(3)]
    for c in counters:
        made.append(make_sandbox({"c": c}))
    mods = [sb.load(SRC, "m") for sb in made]
    yield made, mods, counters
    for sb in made:
        sb.close()


def test_results_in_order_and_callbacks_served(boxes):
    _, mods, counters = boxes
    assert capbridge.gather([(m.work, k) for k, m in enumerate(mods)]) == [0, 10, 20]
    assert [c.n for c in counters] == [3, 3, 3]


def test_first_error_is_raised_after_all_calls_end(boxes):
    _, mods, counters = boxes
    with pytest.raises(RemoteError, match="ValueError"):
        capbridge.gather([(mods[0].work, 1), mods[1].boom, (mods[2].work, 2)])
    assert counters[0].n == 3 and counters[2].n == 3


def test_return_exceptions_puts_them_in_place(boxes):
    _, mods, _ = boxes
    out = capbridge.gather([(mods[0].work, 1), mods[1].boom], return_exceptions=True)
    assert out[0] == 10 and isinstance(out[1], RemoteError)


def test_timeout_interrupts_a_slow_sandbox_and_the_others_answer(boxes):
    made, mods, _ = boxes
    out = capbridge.gather([(mods[0].work, 1), mods[1].spin, (mods[2].work, 3)], timeout=0.5,
                           return_exceptions=True)
    assert out[0] == 10 and out[2] == 30
    assert isinstance(out[1], CallTimeout)
    assert made[1].alive and mods[1].work(4) == 40  # interrupted, not killed


def test_bad_arguments():
    assert capbridge.gather([]) == []
    with pytest.raises(TypeError):
        capbridge.gather([42])
    with pytest.raises(TypeError):
        capbridge.gather([()])
    with pytest.raises(ValueError):
        capbridge.gather([print], timeout=0)


# --------------------------------------------------------------------------- one thread, many channels

STALL_SRC = r"""
import os, struct, sys, time
""" + FIND_CHANNEL_SRC + r"""
def stall():
    # Half a frame: the length says 100 bytes, 10 follow, and then nothing.
    os.write(_channel().wfd, struct.pack(">I", 100) + b"x" * 10)
    time.sleep(30)

def late(clock):
    time.sleep(0.2)
    return clock.mark()

def die():
    os._exit(3)

def ping():
    return "pong"

def slow():
    time.sleep(0.3)
    return "slow"
"""


class Clock:
    def __init__(self) -> None:
        self.at: float | None = None

    @expose
    def mark(self) -> str:
        import time

        self.at = time.monotonic()
        return "marked"


def test_a_sandbox_sending_half_a_frame_holds_up_no_other_call(sandbox_factory):
    """Attack: one sandbox writes a frame's length and a few bytes, then nothing. The
    gathering thread must go on serving the others (a blocking read would wait for
    the rest of that frame until the deadline killed its sandbox)."""
    import time

    bad = sandbox_factory().load(STALL_SRC, "m")
    good = sandbox_factory().load(STALL_SRC, "m")
    clock = Clock()
    start = time.monotonic()
    out = capbridge.gather([bad.stall, (good.late, clock)], timeout=2.0, return_exceptions=True)
    assert out[1] == "marked"
    assert clock.at is not None and clock.at - start < 1.5  # served while the other stalled
    assert isinstance(out[0], capbridge.CapbridgeError)


def test_a_sandbox_dying_mid_gather_fails_only_its_own_call(sandbox_factory):
    mods = [sandbox_factory().load(STALL_SRC, "m") for _ in range(3)]
    out = capbridge.gather([mods[0].ping, mods[1].die, mods[2].slow], return_exceptions=True)
    assert out[0] == "pong" and out[2] == "slow"
    assert isinstance(out[1], capbridge.SandboxError)
    assert mods[0].ping() == "pong"


def test_a_callback_may_call_another_gathered_sandbox(sandbox_factory):
    """A's call calls back into the host, which calls B while B's own gathered call
    is still running: B's answers are routed to the right waiter."""
    b = sandbox_factory().load(STALL_SRC, "m")

    class Hub:
        @expose
        def relay(self) -> str:
            return "via " + b.ping()

    a = sandbox_factory({"hub": Hub()}).load("def go():\n    return hub.relay()\n", "m")
    assert capbridge.gather([a.go, b.slow]) == ["via pong", "slow"]


def test_calls_from_another_thread_into_a_gathered_sandbox(sandbox_factory):
    import threading

    mods = [sandbox_factory().load(SRC + "\ndef echo(x):\n    return x\n", "m") for _ in range(2)]
    stop = threading.Event()
    seen: list = []

    def other() -> None:
        k = 0
        while not stop.is_set():
            assert mods[0].echo(k) == k
            k += 1
        seen.append(k)

    t = threading.Thread(target=other)
    t.start()
    try:
        for round_ in range(50):
            assert capbridge.gather([(mods[0].echo, round_), (mods[1].echo, -round_)]) == [round_, -round_]
    finally:
        stop.set()
        t.join(10)
    assert seen and seen[0] > 0


def test_proxies_and_other_callables_mix(boxes):
    made, mods, _ = boxes
    out = capbridge.gather([(mods[0].work, 1), (made[1].eval, "6 * 7"), (len, "abc"), (mods[2].work, 2)])
    assert out == [10, 42, 3, 20]


def test_gather_inside_a_callback(sandbox_factory):
    inner = [sandbox_factory().load(STALL_SRC, "m") for _ in range(2)]

    class Fan:
        @expose
        def fan(self) -> list:
            return capbridge.gather([m.ping for m in inner] + [inner[0].slow])

    outer = sandbox_factory({"fan": Fan()}).load("def go():\n    return fan.fan()\n", "m")
    assert outer.go() == ["pong", "pong", "slow"]
