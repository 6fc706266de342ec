"""Per-call deadlines: code is interrupted first, the sandbox lives on if it stops,
and code that will not stop is killed when the grace period ends."""

import errno
import gc
import threading
import time

import pytest

import capbridge
from capbridge import CallTimeout, Limits, RemoteError, SandboxError, SandboxTimeout, expose


#: Generous grace for tests that expect the code to stop: a loaded machine may be slow.
PATIENT = 5.0


class Slow:
    def __init__(self):
        self.release = threading.Event()

    @expose
    def wait(self, seconds):
        """Block on the host until released (or ``seconds`` pass)."""
        self.release.wait(seconds)
        return "late"

    @expose
    def thing(self):
        return Slow()

    @expose
    def thing_later(self, seconds):
        """Block like ``wait``, then return a new capability."""
        self.release.wait(seconds)
        return Slow()


def patient(sb):
    sb.interrupt_grace = PATIENT
    return sb


def test_timeout_interrupts_a_pure_python_loop(sandbox_factory):
    sb = patient(sandbox_factory())
    sb.exec("state = 41")
    with pytest.raises(CallTimeout) as info:
        sb.exec("state += 1\nwhile True:\n    pass\n", timeout=0.2)
    assert "timeout=0.2" in str(info.value) and "lives on" in str(info.value)
    assert isinstance(info.value, SandboxTimeout)  # a kind of timeout, for old except clauses
    cause = info.value.__cause__
    assert isinstance(cause, RemoteError) and cause.type_name == "CallTimeout"
    assert "while True" in cause.remote_traceback  # it stopped where it was running
    assert sb.alive
    assert sb.eval("state") == 42  # the sandbox kept its state
    assert sb.eval("1 + 1") == 2


def test_timeout_interrupts_time_sleep(sandbox_factory):
    sb = patient(sandbox_factory())
    start = time.monotonic()
    with pytest.raises(CallTimeout):
        sb.exec("import time\ntime.sleep(3600)\n", timeout=0.2)
    assert time.monotonic() - start < 30  # out of the sleep, not after it
    assert sb.eval("'still here'") == "still here"


def test_timeout_interrupts_a_wait_for_a_host_capability(sandbox_factory):
    slow = Slow()
    sb = patient(sandbox_factory({"slow": slow}))
    timer = threading.Timer(1.0, slow.release.set)  # the host side finishes later
    timer.start()
    try:
        with pytest.raises(CallTimeout):
            sb.exec("import capbridge\ngot = None\ntry:\n    got = slow.wait(30)\nexcept capbridge.CallTimeout as e:\n"
                    "    seen = repr(e)\n    raise\n", timeout=0.2)
    finally:
        timer.cancel()
        slow.release.set()
    assert sb.alive
    assert "CallTimeout" in sb.eval("seen")  # raised at the call site, out of the wait
    assert sb.eval("got") is None  # the late answer was dropped
    gc.collect()
    sb.exec("import gc\ngc.collect()")
    tables = sb.stats()["tables"]
    assert tables["questions"] == 0 and tables["answers"] == 0, tables
    assert tables["exports"] == 1, tables  # just the grant


def test_a_late_answer_carrying_a_capability_is_released(sandbox_factory):
    slow = Slow()
    sb = patient(sandbox_factory({"slow": slow}))
    threading.Timer(0.6, slow.release.set).start()
    mod = sb.load("def late():\n    return slow.thing_later(30)\n", "m")
    with pytest.raises(CallTimeout):
        with sb.deadline(0.2):
            mod.late()
    assert sb.stats()["tables"]["exports"] == 2  # the grant, and the answer the sandbox dropped
    for _ in range(3):
        sb.exec("import gc\ngc.collect()")  # its release rides along with the next message
        gc.collect()
    assert sb.stats()["tables"]["exports"] == 1, sb.stats()["tables"]


def test_timeout_interrupts_code_nested_in_a_capability(sandbox_factory):
    seen = []

    def relay(callback):
        try:
            return callback()
        except RemoteError as exc:  # the inner sandbox code was interrupted
            seen.append(exc.type_name)
            raise

    sb = patient(sandbox_factory({"relay": relay}))
    with pytest.raises(CallTimeout):
        sb.exec("def spin():\n    while True:\n        pass\nrelay(spin)\n", timeout=0.2)
    assert seen == ["CallTimeout"]
    assert sb.eval("'alive'") == "alive"
    tables = sb.stats()["tables"]
    assert tables["questions"] == 0 and tables["answers"] == 0, tables


def test_code_that_catches_the_interrupt_and_goes_on_is_killed(sandbox_factory):
    sb = sandbox_factory(limits=Limits(cpu_seconds=None))
    sb.interrupt_grace = 0.3
    start = time.monotonic()
    with pytest.raises(SandboxTimeout) as info:
        sb.exec("while True:\n    try:\n        while True:\n            pass\n"
                "    except BaseException:\n        sum(range(10 ** 13))\n", timeout=0.2)
    assert not isinstance(info.value, CallTimeout)
    assert "did not stop" in str(info.value) and "killed" in str(info.value)
    assert time.monotonic() - start < 30
    assert not sb.alive
    with pytest.raises(SandboxError):
        sb.eval("1")


def test_code_that_blocks_every_signal_is_killed(sandbox_factory):
    sb = sandbox_factory(limits=Limits(cpu_seconds=None))
    sb.interrupt_grace = 0.3
    with pytest.raises(SandboxTimeout) as info:
        sb.exec("import signal\nsignal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())\n"
                "while True:\n    pass\n", timeout=0.2)
    assert not isinstance(info.value, CallTimeout)
    assert not sb.alive


def test_code_that_replaces_the_handlers_is_killed(sandbox_factory):
    sb = sandbox_factory(limits=Limits(cpu_seconds=None))
    sb.interrupt_grace = 0.3
    with pytest.raises(SandboxTimeout):
        sb.exec("import signal\nfor s in range(signal.SIGRTMIN, signal.SIGRTMAX + 1):\n"
                "    signal.signal(s, signal.SIG_IGN)\nwhile True:\n    pass\n", timeout=0.2)
    assert not sb.alive


def test_a_late_interrupt_never_hits_the_next_call(sandbox_factory):
    sb = patient(sandbox_factory())
    outcomes = set()
    for i in range(40):
        try:
            sb.eval("__import__('time').sleep(0.004)", timeout=0.004)
            outcomes.add("finished")
        except CallTimeout:
            outcomes.add("interrupted")
        # whatever the race did to the call before, this one is not touched
        assert sb.eval(f"{i} + 1") == i + 1
        sb.exec("x = sum(range(20000))")
    assert "interrupted" in outcomes


def test_deadline_block_covers_proxy_calls(sandbox_factory):
    sb = patient(sandbox_factory())
    mod = sb.load("def f(x):\n    return 2 * x\ndef spin():\n    while True:\n        pass\n", "npc")
    with sb.deadline(0.3) as block:
        assert mod.f(2) == 4
        assert block.remaining is not None and block.remaining <= 0.3
        with pytest.raises(CallTimeout, match=r"Sandbox.deadline\(0.3\)"):
            mod.spin()
        with pytest.raises(CallTimeout, match="had passed before the call started"):
            mod.f(3)
    assert mod.f(5) == 10  # outside the block: no deadline but the wall limit


def test_deadline_blocks_nest_and_are_per_thread(sandbox_factory):
    sb = patient(sandbox_factory())
    with sb.deadline(0.2):
        with sb.deadline(60):  # the earlier deadline wins
            with pytest.raises(CallTimeout):
                sb.exec("while True:\n    pass\n")
    other = []

    def elsewhere():
        other.append(sb.eval("__import__('time').sleep(0.5) or 'slept'"))

    with sb.deadline(0.1):
        t = threading.Thread(target=elsewhere)
        t.start()
        t.join()
    assert other == ["slept"]  # another thread's calls are not covered


def test_timeout_replaces_wall_seconds(sandbox_factory):
    sb = sandbox_factory(limits=Limits(wall_seconds=0.2))
    assert sb.eval("__import__('time').sleep(0.4) or 'ok'", timeout=10) == "ok"
    assert sb.load("import time\ntime.sleep(0.4)\nX = 1\n", "slowmod", timeout=10).X == 1
    assert sb.call(time.sleep, 0.4, timeout=10) is None
    with pytest.raises(SandboxTimeout, match="wall_seconds"):  # without timeout=: killed
        sb.exec("import time\ntime.sleep(0.4)")
    assert not sb.alive


def test_load_and_call_accept_timeouts(sandbox_factory):
    sb = patient(sandbox_factory())
    with pytest.raises(CallTimeout):
        sb.load("while True:\n    pass\n", "stuck", timeout=0.2)
    with pytest.raises(RemoteError, match="ModuleNotFoundError"):
        sb.exec("import stuck")  # a module whose code was interrupted is not left behind

    def spin():
        while True:
            pass

    with pytest.raises(CallTimeout):
        sb.call(spin, timeout=0.2)

    def takes_timeout(*, timeout):
        return timeout

    assert sb.call(lambda: takes_timeout(timeout=7)) == 7  # `timeout` itself is call's
    assert sb.alive


def test_per_call_cpu_budget(sandbox_factory):
    sb = patient(sandbox_factory(limits=Limits(call_cpu_seconds=0.3, cpu_seconds=None)))
    with pytest.raises(CallTimeout, match="call_cpu_seconds=0.3"):
        sb.exec("while True:\n    pass\n")
    assert sb.alive
    # sleeping spends no CPU: a call much longer than the budget is fine
    assert sb.eval("__import__('time').sleep(0.8) or 'rested'") == "rested"
    # the budget is per call: several calls may together use more than one budget
    for _ in range(4):
        sb.exec("import time\nt = time.process_time()\nwhile time.process_time() - t < 0.1:\n    pass\n")
    assert sb.stats()["cpu_seconds"] >= 0.3


def test_per_call_cpu_budget_kills_what_will_not_stop(sandbox_factory):
    sb = sandbox_factory(limits=Limits(call_cpu_seconds=0.2, cpu_seconds=None))
    sb.interrupt_grace = 0.3
    with pytest.raises(capbridge.CPULimitExceeded, match="call_cpu_seconds"):
        sb.exec("sum(range(10 ** 13))")
    assert not sb.alive


@pytest.mark.parametrize("bad", [0, -1, "1", True, float("nan")])
def test_timeout_must_be_a_positive_number(sb, bad):
    with pytest.raises(ValueError, match="positive number"):
        sb.eval("1", timeout=bad)
    with pytest.raises(ValueError, match="positive number"):
        sb.deadline(bad)


def test_interrupts_reach_only_their_own_sandbox(sandbox_factory):
    busy = patient(sandbox_factory())
    target = patient(sandbox_factory())
    done = []
    t = threading.Thread(target=lambda: done.append(busy.eval("__import__('time').sleep(1.0) or 'done'")))
    t.start()
    with pytest.raises(CallTimeout):
        target.exec("while True:\n    pass\n", timeout=0.2)
    t.join()
    assert done == ["done"]  # the other sandbox's call ran to its end


def test_a_sandbox_cannot_forge_interrupts_into_another(sandbox_factory):
    # strict only: the seccomp layer is what limits kill() to the caller itself
    victim = patient(sandbox_factory(confinement="strict"))
    attacker = sandbox_factory(confinement="strict")
    attacker.exec(
        "import os, signal\nresults = set()\n"
        "for pid in (PID, os.getppid(), -1, 0 if os.getpid() != 1 else -PID):\n"
        "    for sig in range(signal.SIGRTMIN, signal.SIGRTMAX + 1):\n"
        "        try:\n            os.kill(pid, sig)\n            results.add(('sent', pid, sig))\n"
        "        except OSError as e:\n            results.add(e.errno)\n".replace("PID", str(victim.pid)))
    results = attacker.eval("results")
    assert results == {errno.EPERM}, results
    assert victim.eval("__import__('time').sleep(0.3) or 'untouched'") == "untouched"


def test_close_while_other_threads_call(sandbox_factory):
    sb = sandbox_factory()
    outcomes = []

    def caller():
        try:
            while True:
                sb.eval("1")
        except SandboxError as exc:
            outcomes.append(type(exc).__name__)

    threads = [threading.Thread(target=caller) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.1)
    sb.close()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads), "a caller hung after close()"
    assert len(outcomes) == 3
