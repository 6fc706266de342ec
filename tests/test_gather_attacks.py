"""Attacks on capbridge.gather: hostile sandboxes and careless hosts, against real sandboxes.

The hostile sandbox finds its own channel by walking the interpreter's frames (as any
untrusted code can) and writes bytes to the host behind the runtime's back. Every
failure must stay in its own call's place: the other sandboxes of the gather answer,
and ``gather`` returns (or raises the first error) once every call has ended.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

import capbridge
from capbridge import (
    CallTimeout,
    CapbridgeError,
    Limits,
    ProtocolError,
    RemoteError,
    SandboxCrashed,
    SandboxError,
    SandboxTimeout,
    expose,
)
from hostile import FIND_CHANNEL_SRC

HOSTILE = r'''
import os, sys, struct, time
''' + FIND_CHANNEL_SRC + r'''
def _write(data, piece=None, pause=0.0):
    ch = _channel()
    with ch._send_lock:
        view = memoryview(data)
        while view:
            view = view[os.write(ch.wfd, view[:piece] if piece else view):]
            if pause:
                time.sleep(pause)

def _answer(value, qid=None):
    ch = _channel()
    return ch.session.plain_frame((2, ch._local.serving[-1] if qid is None else qid, value))

def _hold():
    # Keep this thread here whatever the host sends (interrupts included), so the
    # runtime never writes an answer of its own after the forged bytes.
    end = time.monotonic() + 60
    while time.monotonic() < end:
        try:
            time.sleep(60)
        except BaseException:
            pass

def ping():
    return "pong"

def slow(t):
    time.sleep(t)
    return t

def garbage():
    _write(struct.pack(">I", 24) + b"\xff" * 24)
    _hold()

def oversized():
    _write(struct.pack(">I", 0xFFFFFFF0))
    _hold()

def in_pieces(value):
    _write(_answer(value), piece=1, pause=0.001)
    _hold()

def answer_twice(value):
    _write(_answer(value) + _answer(value))
    _hold()

def answer_others(span):
    me = _channel()._local.serving[-1]
    _write(b"".join(_answer("forged", q) for q in range(max(1, me - span), me + span) if q != me))
    _hold()

def close_channel():
    os.close(_channel().wfd)
    _hold()

def spin():
    while True:
        pass

def stubborn():
    while True:
        try:
            while True:
                pass
        except BaseException:
            pass

def half_frame_when_interrupted():
    try:
        while True:
            pass
    except BaseException:
        pass
    _write(struct.pack(">I", 100) + b"x" * 10)
    _hold()

def flood(seconds):
    end = time.monotonic() + seconds
    line = "x" * 4000
    while time.monotonic() < end:
        print(line)
    return "flooded"

def die():
    os._exit(7)

def call_hub(*args):
    return hub.go(*args)

def try_hub():
    try:
        return hub.go()
    except Exception as e:
        return type(e).__name__

def until_refused():
    n = 0
    while n < 10000:
        try:
            hub.go()
        except Exception as e:
            return type(e).__name__
        time.sleep(0.01)
        n += 1
    return "never refused"
'''


class Hub:
    """A host capability whose method runs ``fn``."""

    def __init__(self, fn) -> None:
        self.fn = fn

    @expose
    def go(self, *args):
        return self.fn(*args)


@pytest.fixture
def box(sandbox_factory):
    """``box(grants=None, **kw)``: a real strict sandbox with HOSTILE loaded, as a module proxy."""

    def make(grants=None, **kwargs):
        return sandbox_factory(grants, **kwargs).load(HOSTILE, "hostile")

    return make


def _gather_bounded(calls, limit=60.0, **kwargs):
    """gather on a helper thread, so a hang fails the test instead of stalling the suite."""
    done: list = []

    def run() -> None:
        try:
            done.append(("ok", capbridge.gather(calls, **kwargs)))
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            done.append(("raised", exc))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(limit)
    assert done, f"gather did not return within {limit}s"
    kind, value = done[0]
    if kind == "raised":
        raise value
    return value


# --------------------------------------------------------------------------- hostile frames


def test_a_garbage_frame_kills_only_its_sandbox(box):
    bad, good = box(), box()
    out = _gather_bounded([bad.garbage, good.ping, (good.slow, 0.1)], timeout=20, return_exceptions=True)
    assert isinstance(out[0], ProtocolError)
    assert out[1:] == ["pong", 0.1]
    assert good.ping() == "pong"


def test_an_oversized_frame_is_refused_before_it_is_read(box):
    bad, good = box(), box()
    out = _gather_bounded([bad.oversized, good.ping], timeout=20, return_exceptions=True)
    assert isinstance(out[0], ProtocolError) and "exceeds the limit" in str(out[0])
    assert out[1] == "pong"


def test_an_answer_written_one_byte_at_a_time(box):
    slow, good = box(), box()
    out = _gather_bounded([(slow.in_pieces, "v" * 300), good.ping, (good.slow, 0.05)], timeout=30)
    assert out == ["v" * 300, "pong", 0.05]


def test_two_answers_in_one_write_give_one_result(box):
    dup, good = box(), box()
    assert _gather_bounded([(dup.answer_twice, 5), good.ping], timeout=20) == [5, "pong"]


def test_answers_to_questions_never_asked_kill_the_forger_only(box):
    """The forger answers every question id near its own (the ids the other sandbox's
    calls carry included): that is its protocol error, and the other calls get their
    own answers, never the forged one."""
    forger, a, b = box(), box(), box()
    out = _gather_bounded([(forger.answer_others, 8), (a.slow, 0.2), b.ping, (a.slow, 0.1)],
                          timeout=20, return_exceptions=True)
    assert isinstance(out[0], ProtocolError) and "unknown question" in str(out[0])
    assert out[1:] == [0.2, "pong", 0.1]


def test_a_sandbox_closing_its_channel(box):
    bad, good = box(), box()
    out = _gather_bounded([bad.close_channel, (good.slow, 0.2)], timeout=20, return_exceptions=True)
    assert isinstance(out[0], SandboxError) and out[1] == 0.2


def test_half_a_frame_sent_while_interrupted_does_not_hang_the_deadline(box):
    """The sandbox is interrupted, catches it, and writes a frame's length and a few
    bytes. The thread that reads the channel during the interrupt's grace must not
    wait for the rest of that frame: the kill after the grace is decided there."""
    clock = []
    evil = box()
    busy = box({"hub": Hub(lambda: time.sleep(1.5) or clock.append(1) or "slept")})
    out = _gather_bounded([busy.call_hub, evil.half_frame_when_interrupted], limit=40,
                          timeout=0.5, return_exceptions=True)
    assert clock  # the host callback ran to its end
    assert isinstance(out[0], CallTimeout)
    assert isinstance(out[1], CapbridgeError) and not isinstance(out[1], CallTimeout)


# --------------------------------------------------------------------------- deadlines


def test_a_sandbox_that_never_answers_is_stopped_and_the_others_answer(box):
    spinner, stubborn, good = box(), box(), box()
    out = _gather_bounded([spinner.spin, stubborn.stubborn, (good.slow, 0.1), good.ping],
                          timeout=0.5, return_exceptions=True)
    assert isinstance(out[0], CallTimeout)
    assert isinstance(out[1], SandboxTimeout) and not isinstance(out[1], CallTimeout)
    assert out[2:] == [0.1, "pong"]
    assert spinner.ping() == "pong"  # interrupted, not killed


def test_a_slow_host_callback_does_not_time_out_calls_that_answered(box):
    """While the gathering thread runs one sandbox's slow callback, another sandbox
    answers well within its timeout. Its answer waits unread; it is still its
    answer, not a CallTimeout (nor, past the wall limit, a kill)."""
    busy = box({"hub": Hub(lambda: time.sleep(1.5) or "slept")})
    quick = box()
    out = _gather_bounded([busy.call_hub, (quick.slow, 0.05)], timeout=0.7, return_exceptions=True)
    assert isinstance(out[0], CallTimeout)  # its own callback made it late
    assert out[1] == 0.05


def test_a_slow_host_callback_past_the_wall_limit_kills_no_one_who_answered(box):
    busy = box({"hub": Hub(lambda: time.sleep(2.5) or "slept")}, limits=Limits(wall_seconds=30))
    quick = box(limits=Limits(wall_seconds=1))
    assert _gather_bounded([busy.call_hub, (quick.slow, 0.3)]) == ["slept", 0.3]
    assert quick.ping() == "pong"


def test_timeout_applies_to_sandbox_methods_too(sandbox_factory):
    """``(sb.exec, source)`` is a call into a sandbox like a proxy call: gather's
    timeout interrupts it instead of waiting for Limits.wall_seconds."""
    a = sandbox_factory(limits=Limits(wall_seconds=30))
    b = sandbox_factory()
    out = _gather_bounded([(a.exec, "while True:\n    pass\n"), (b.eval, "6 * 7")], limit=25,
                          timeout=0.5, return_exceptions=True)
    assert isinstance(out[0], CallTimeout) and out[1] == 42
    assert a.alive and a.eval("1 + 1") == 2
    with pytest.raises(CallTimeout, match="timeout=0.5"):
        capbridge.gather([(a.exec, "while True:\n    pass\n")], timeout=0.5)


def test_a_deadline_block_around_gather(box, sandbox_factory):
    """A ``Sandbox.deadline`` block (this thread's) bounds that sandbox's calls in a
    gather; the others run on their own terms."""
    sb = sandbox_factory()
    spinner = sb.load(HOSTILE, "hostile")
    other = box()
    with sb.deadline(0.5):
        out = capbridge.gather([spinner.spin, (other.slow, 0.1)], return_exceptions=True)
    assert isinstance(out[0], CallTimeout) and "deadline" in str(out[0])
    assert out[1] == 0.1
    assert spinner.ping() == "pong"


def test_a_sandbox_calling_back_in_a_loop_is_stopped(box):
    """Every callback is served, and the timeout still ends the call."""
    caller, good = box({"hub": Hub(lambda: None)}), box()
    out = _gather_bounded([caller.until_refused, good.ping], timeout=0.5, return_exceptions=True)
    assert isinstance(out[0], CallTimeout) and out[1] == "pong"
    assert caller.ping() == "pong"


# --------------------------------------------------------------------------- output and callbacks


def test_a_sandbox_flooding_stdout_while_others_run(box):
    got: list = []
    flooder = box(stdout=got.append)
    good = box()
    out = _gather_bounded([(flooder.flood, 1.0), good.ping, (good.slow, 0.2)], timeout=30)
    assert out == ["flooded", "pong", 0.2]
    assert sum(map(len, got)) > 0


def test_a_callback_gathering_the_same_sandboxes_again(box):
    holder: list = []
    other = box()
    first = box({"hub": Hub(lambda: capbridge.gather([holder[0].ping, other.ping, holder[0].ping]))})
    holder.append(first)
    out = _gather_bounded([first.call_hub, (other.slow, 0.2), first.ping])
    assert out == [["pong", "pong", "pong"], 0.2, "pong"]


def test_a_callback_that_blocks_holds_up_only_the_clock(box):
    busy, good = box({"hub": Hub(lambda: time.sleep(0.5) or "slept")}), box()
    assert _gather_bounded([busy.call_hub, good.ping, (good.slow, 0.1)]) == ["slept", "pong", 0.1]


def test_exceptions_in_host_callbacks(box):
    class Unprintable(Exception):
        def __str__(self):
            raise RuntimeError("no str")

    def unprintable():
        raise Unprintable()

    zero = box({"hub": Hub(lambda: 1 / 0)})
    odd = box({"hub": Hub(unprintable)})
    good = box()
    out = _gather_bounded([zero.call_hub, zero.try_hub, odd.try_hub, odd.call_hub, good.ping],
                          return_exceptions=True)
    assert isinstance(out[0], RemoteError) and "ZeroDivisionError" in str(out[0])
    assert out[1] == "ZeroDivisionError"
    assert isinstance(out[2], str) and isinstance(out[3], RemoteError)
    assert out[4] == "pong"
    assert zero.ping() == "pong" and odd.ping() == "pong"


def test_a_sandbox_dying_inside_its_own_callback(box):
    holder: list = []
    victim = box({"hub": Hub(lambda: holder[0].die())})
    holder.append(victim)
    good = box()
    out = _gather_bounded([victim.call_hub, (good.slow, 0.2)], return_exceptions=True)
    assert isinstance(out[0], SandboxCrashed) and out[1] == 0.2


def test_a_callback_closing_its_own_or_another_gathered_sandbox(sandbox_factory, box):
    holder: list = []
    own = sandbox_factory({"hub": Hub(lambda: holder[0].close() or "closed")})
    holder.append(own)
    closer = own.load(HOSTILE, "hostile")
    target_sb = sandbox_factory()
    target = target_sb.load(HOSTILE, "hostile")
    other_closer = box({"hub": Hub(lambda: target_sb.close() or "closed")})
    good = box()
    out = _gather_bounded([closer.call_hub, (target.slow, 1.0), other_closer.call_hub, (good.slow, 0.2)],
                          return_exceptions=True)
    assert isinstance(out[0], SandboxError) and isinstance(out[1], SandboxError)
    assert out[2:] == ["closed", 0.2]


def test_a_sandbox_closed_by_another_thread_mid_gather(sandbox_factory, box):
    """Closing frees the channel's fds while gather still watches them."""
    doomed_sb = sandbox_factory()
    doomed = doomed_sb.load(HOSTILE, "hostile")
    good = box()
    timer = threading.Timer(0.2, doomed_sb.close)
    timer.start()
    try:
        out = _gather_bounded([(good.slow, 0.6), (doomed.slow, 5.0), good.ping], return_exceptions=True)
    finally:
        timer.join()
    assert out[0] == 0.6 and out[2] == "pong"
    assert isinstance(out[1], SandboxError)
    assert good.ping() == "pong"  # not poisoned by an abandoned question


def test_a_revoked_capability_inside_gather(box):
    class Thing:
        @expose
        def go(self):
            return "ok"

    cap, revoke = capbridge.revocable(Thing())
    user = box({"hub": cap})
    assert user.call_hub() == "ok"

    def later():
        time.sleep(0.2)
        revoke()
        return "revoked"

    revoker = box({"hub": Hub(later)})
    out = _gather_bounded([user.until_refused, revoker.call_hub], timeout=30)
    assert out == ["RevokedError", "revoked"]


# --------------------------------------------------------------------------- careless hosts


def test_zero_and_one_job(box):
    good = box()
    assert capbridge.gather([]) == []
    assert capbridge.gather(iter([])) == []
    assert capbridge.gather([good.ping]) == ["pong"]
    assert capbridge.gather(x for x in [(good.slow, 0.01)]) == [0.01]
    with pytest.raises(CallTimeout, match="timeout=0.5"):
        capbridge.gather([good.spin], timeout=0.5)
    out = capbridge.gather([good.spin], timeout=0.5, return_exceptions=True)
    assert isinstance(out[0], CallTimeout)
    assert good.ping() == "pong"


def test_the_same_proxy_twice_and_two_proxies_of_one_sandbox(sandbox_factory):
    sb = sandbox_factory()
    m = sb.load(HOSTILE, "hostile")
    o = sb.load("def inc(x):\n    return x + 1\n", "other")
    out = _gather_bounded([m.ping, m.ping, (o.inc, 1), (m.slow, 0.1), (sb.eval, "2 + 2"), (o.inc, 2)])
    assert out == ["pong", "pong", 2, 0.1, 4, 3]


def test_a_proxy_of_a_closed_sandbox_fails_in_place(sandbox_factory, box):
    dead_sb = sandbox_factory()
    dead = dead_sb.load(HOSTILE, "hostile")
    dead_sb.close()
    good = box()
    out = capbridge.gather([dead.ping, good.ping, (len, "abc")], return_exceptions=True)
    assert isinstance(out[0], SandboxError) and out[1:] == ["pong", 3]


def test_order_kept_and_first_error_raised_after_all_end(box):
    done: list = []
    boxes = [box({"hub": Hub(lambda k: done.append(k) or k)}) for _ in range(3)]
    src_calls = [(boxes[0].call_hub, 0), boxes[1].garbage, (boxes[2].call_hub, 2),
                 (boxes[0].slow, 0.3), boxes[2].die, (boxes[0].call_hub, 5)]
    with pytest.raises(ProtocolError):  # index 1's error, though index 4 failed too
        _gather_bounded(src_calls, timeout=20)
    # Raised once every call had ended: sandbox 0 ran its third call after its slow one.
    assert sorted(done) == [0, 2, 5]
    out = _gather_bounded(src_calls, timeout=20, return_exceptions=True)
    assert out[0] == 0 and out[3] == 0.3 and out[5] == 5
    assert all(isinstance(e, CapbridgeError) for e in out[1:3] + [out[4]])
    out = _gather_bounded([(boxes[0].slow, 0.2), (boxes[0].call_hub, 7), boxes[0].ping], timeout=20)
    assert out == [0.2, 7, "pong"]


def test_two_host_threads_gathering_over_the_same_sandboxes(box):
    mods = [box() for _ in range(2)]
    errors: list = []

    def worker(tag: int) -> None:
        try:
            for k in range(30):
                out = capbridge.gather([(mods[0].slow, 0), mods[1].ping, (mods[0].slow, 0.001 * tag), mods[0].ping])
                assert out == [0, "pong", 0.001 * tag, "pong"], out
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors


def test_no_fd_or_thread_leak_after_200_rounds(box):
    caller = box({"hub": Hub(lambda k: k)})
    good = box()
    calls = [(caller.call_hub, 1), good.ping, (good.slow, 0), (len, "ab")]
    assert capbridge.gather(calls) == [1, "pong", 0, 2]  # warm up (worker pool, poll objects)
    fds = len(os.listdir("/proc/self/fd"))
    threads = threading.active_count()
    for _ in range(200):
        assert capbridge.gather(calls, timeout=10) == [1, "pong", 0, 2]
    time.sleep(0.2)  # interrupt helper threads (none expected) would end by now
    assert len(os.listdir("/proc/self/fd")) <= fds
    assert threading.active_count() <= threads + 1


def test_an_interrupt_out_of_a_callback_leaves_the_other_sandboxes_alive(box):
    """A KeyboardInterrupt raised in a host callback ends gather at once; the calls it
    gave up on answer later, and their answers are dropped: no one is killed for them."""

    def interrupt():
        raise KeyboardInterrupt

    caller = box({"hub": Hub(interrupt)})
    others = [box() for _ in range(3)]
    with pytest.raises(KeyboardInterrupt):
        capbridge.gather([caller.call_hub] + [(o.slow, 0.3) for o in others], timeout=20)
    time.sleep(0.6)  # the late answers arrive and are read by the next calls
    for o in others:
        assert o.ping() == "pong"
        assert o.slow(0.01) == 0.01


def test_two_calls_on_one_sandbox_in_a_gather_each_have_the_wall_limit(sandbox_factory):
    """Every call a gather begins is outermost: the second call on the same sandbox
    spins past ``wall_seconds`` and is stopped like the first would be."""
    sb = sandbox_factory(limits=Limits(wall_seconds=1))
    mod = sb.load("def f():\n    return 42\n\ndef spin():\n    while True:\n        pass\n", "calls")
    out = _gather_bounded([mod.f, mod.spin], limit=20, return_exceptions=True)
    assert out[0] == 42
    assert isinstance(out[1], capbridge.SandboxTimeout)
