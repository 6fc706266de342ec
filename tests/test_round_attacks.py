"""Attacks on the start-up and hot-path short cuts: the standby child, CPU
placement, stdlib value types imported on first use, the CALL memo.

Each test is bounded (a few sandboxes, a few seconds) and signals nothing outside
its own process tree: probes from inside a sandbox use signal 0 only.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from capbridge import Limits, RemoteError, Sandbox, SandboxTimeout
from capbridge._host_session import _MEMO_CALL, MAX_CALL_MEMO, HostSession
from capbridge._protocol import Op, Tag
from capbridge._sandbox_session import SandboxSession
from sandbox_vm import _spawn

sys.path.insert(0, os.path.dirname(__file__))
from test_standby import ATTEMPT, children_of  # noqa: E402

PROBE = ATTEMPT  # attempt(f): 'allowed' or the OSError's type name


def _server_children() -> set[int]:
    _spawn.prestart()
    return children_of(_spawn.stats()["server_pid"])


def _settled(before: set[int], timeout: float = 10.0) -> set[int]:
    """The server's children that were not there ``before``, once no sandbox
    process is left over (a fresh standby may come and stay: at most one)."""
    end = time.monotonic() + timeout
    while True:
        extra = _server_children() - before
        if len(extra) <= 1 or time.monotonic() > end:
            return extra
        time.sleep(0.05)


# --------------------------------------------------------------------------- cpus


@pytest.mark.parametrize("bad", [{2**31}, {10**30}])
def test_cpu_numbers_too_large_for_the_kernel_are_refused_and_leave_no_process(bad):
    before = _server_children()
    for _ in range(3):
        with pytest.raises(ValueError, match="cannot be used"):
            Sandbox(cpus=bad)
    # Each refused sandbox's process is ended (at most one new standby remains).
    assert len(_settled(before)) <= 1


@pytest.mark.parametrize("bad", [b"\x00", bytearray(b"\x01"), memoryview(b"\x00")])
def test_bytes_are_not_cpu_sets(bad):
    with pytest.raises(ValueError, match="set of CPU numbers"):
        Sandbox(cpus=bad)


# --------------------------------------------------------------------------- standby


@pytest.mark.filterwarnings("ignore:capbridge. confinement='none'")
def test_after_strict_a_none_sandbox_gets_no_namespaces_and_strict_again_gets_all():
    with Sandbox(confinement="strict") as sb:
        assert sb.missing_layers == ()
    time.sleep(0.05)  # a namespaced standby is waiting now
    with Sandbox(confinement="none") as sb:
        assert sb.eval("__import__('os').getuid()") == os.getuid()  # not in a user namespace
        sb.exec(PROBE)
        assert sb.eval("attempt(lambda: socket.socket().close())") == "allowed"
    time.sleep(0.05)  # a standby without namespaces is waiting now: strict unshares them itself
    with Sandbox(confinement="strict") as sb:
        assert sb.missing_layers == ()
        assert "unshared user,net,ipc,mount,uts" in sb.confinement_report[1][2]
        sb.exec(PROBE)
        assert sb.eval("attempt(lambda: socket.socket().close())") == "PermissionError"
        assert sb.eval("attempt(lambda: os.fork() or None)") == "PermissionError"
        assert sb.eval("attempt(lambda: open('/etc/passwd').read())") == "PermissionError"
    with Sandbox(confinement="best-effort") as sb:
        assert "namespaces" not in sb.missing_layers
        assert sb.eval("__import__('os').getuid()") == 65534
    with Sandbox(confinement="strict") as sb:
        assert sb.missing_layers == ()
        assert "unshared user,net,ipc,mount,uts" in sb.confinement_report[1][2]


PROBE_OTHERS = """
import ctypes
_libc = ctypes.CDLL(None, use_errno=True)
def seize(pid):
    # PTRACE_SEIZE does not stop the tracee; detach at once should it ever succeed
    if _libc.ptrace(0x4206, pid, 0, 0) == 0:
        _libc.ptrace(17, pid, 0, 0)
        return "allowed"
    return ctypes.get_errno()
"""


def _reach(sb, server_pid: int) -> None:
    sb.exec(PROBE + PROBE_OTHERS)
    time.sleep(0.1)  # the next standby has forked
    others = children_of(server_pid) - {sb.pid}
    assert sb.eval("sorted(fd for fd in range(256) if attempt(lambda: os.fstat(fd)) == 'allowed')") \
        == [0, 1, 2, 3, 4]
    own = sb.eval("os.getpid()")
    for pid in sorted({server_pid, *others, os.getpid(), own + 1, own - 1} - {own, 0}):
        assert sb.eval(f"attempt(lambda: os.kill({pid}, 0))") == "PermissionError", pid
        assert sb.eval(f"attempt(lambda: open('/proc/{pid}/status').read())") != "allowed", pid
        assert sb.eval(f"attempt(lambda: os.sched_getaffinity({pid}))") != "allowed", pid
        assert sb.eval(f"seize({pid})") != "allowed", pid
    assert sb.eval("attempt(lambda: os.listdir('/proc'))") == "PermissionError"


def test_a_sandbox_cannot_reach_the_next_standby_or_the_server():
    _spawn.prestart()
    server_pid = _spawn.stats()["server_pid"]
    with Sandbox(confinement="strict") as sb:
        _reach(sb, server_pid)


def test_without_pid_namespaces_a_sandbox_cannot_reach_the_standby_or_the_server(monkeypatch):
    from sandbox_vm._spawn import ForkServer

    server = ForkServer(pid_namespace=False)
    try:
        assert server.ready(30)
        monkeypatch.setattr(_spawn, "spawn", server.spawn)
        for _ in range(3):  # the first may be forked afresh, the next from the standby
            with Sandbox(confinement="strict") as sb:
                _reach(sb, server.server_pid)
    finally:
        server.close()


# --------------------------------------------------------------------------- stdlib values

_FIRST_SANDBOX = r"""
import sys
from capbridge import Sandbox, expose

class Echo:
    @expose
    def back(self, value):
        return value

KEYS = '''
KEYS = {datetime.date(2020, 1, 2): 1, decimal.Decimal("1.5"): 2, fractions.Fraction(1, 3): 3,
        uuid.UUID(int=7): 4, datetime.timedelta(seconds=5): 5,
        datetime.datetime(2020, 1, 2, 3, 4, tzinfo=datetime.timezone.utc): 6}
'''
with Sandbox({"echo": Echo()}, confinement="strict") as sb:
    assert sb.missing_layers == ()
    sb.exec("import datetime, decimal, fractions, uuid" + KEYS)
    # (rebuilding a host signature imports ast and inspect in the sandbox, locked down)
    assert sb.eval("str(__import__('inspect').signature(echo.back))") == "(value)"
    got = sb.eval("echo.back(KEYS) == KEYS and echo.back(frozenset(KEYS)) == frozenset(KEYS)")
    assert got is True, got
    import datetime, decimal, fractions, uuid
    exec(KEYS)
    assert sb.eval("KEYS") == KEYS
    assert sb.call(lambda d: sorted(map(type, d), key=str) == sorted(map(type, KEYS), key=str), KEYS) is True
print("ok")
"""


def test_the_first_strict_sandbox_of_a_process_passes_stdlib_values_and_keys():
    # A fresh process: its first sandbox is forked before the server's idle warm-up
    # imports datetime, decimal, fractions or uuid (the sandbox imports them locked down).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", _FIRST_SANDBOX], capture_output=True, text=True,
                          timeout=120, env=env, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "ok"


_DECODE_FRESH = textwrap.dedent("""
    import sys
    from capbridge import ProtocolError
    from capbridge import _codec, _decoder
    from capbridge._host_session import HostSession
    good, bad = (bytes.fromhex(x) for x in sys.argv[1:3])
    msg = HostSession().decode(good)
    assert _codec._loaded and any(t.__name__ == "datetime" for t in _decoder._DATA_KEYS)
    (key,) = msg[6][0]
    assert type(key).__name__ == "datetime" and msg[6][0][key] == 1, msg
    try:
        HostSession().decode(bad)
    except ProtocolError as exc:
        print("refused", exc)
    else:
        print("accepted")
""")


def test_a_stdlib_key_in_the_first_message_of_a_process_is_built_and_checked():
    # (The host registers the stdlib types as data keys before its first decode; a
    # record is built, and its payload checked, whether or not they were.)
    import datetime

    sender = SandboxSession()
    good = sender.encode((int(Tag.CALL), 5, 0, 0, int(Op.CALL), "f", ({datetime.datetime(2020, 1, 2): 1},), {}))
    # The same message with the record's payload swapped for a malformed one.
    bad = good.replace(b"2020-01-02T00:00:00", b"2020-99-02T00:00:00")
    assert bad != good
    proc = subprocess.run([sys.executable, "-c", _DECODE_FRESH, good.hex(), bad.hex()],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("refused"), proc.stdout


# --------------------------------------------------------------------------- the CALL memo


def test_the_call_memo_at_its_worst_stays_near_its_documented_size():
    import tracemalloc

    # Sixteen one-character str arguments of two UTF-8 bytes each: the most objects a
    # payload of _MEMO_CALL bytes can make the memo keep.
    sender = SandboxSession()
    bodies = []
    for i in range(MAX_CALL_MEMO):
        args = tuple(chr(0x100 + (i * 13 + k) % 0x700) for k in range(16))
        body = sender.encode_plain((int(Tag.CALL), 5, 0, 0, int(Op.CALL), "f", args, {}))
        assert len(body) <= _MEMO_CALL
        bodies.append(body)
    host = HostSession()
    host.decode(bodies[0])
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for body in bodies[1:]:
            host.decode(body)
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(host._calls) == MAX_CALL_MEMO
    assert kept < 200 * 1024  # about 180 KiB (see MAX_CALL_MEMO)
    # The next one starts the memo again.
    host.decode(sender.encode_plain((int(Tag.CALL), 5, 0, 0, int(Op.CALL), "g", (), {})))
    assert len(host._calls) == 1


# --------------------------------------------------------------------------- outermost calls

SPIN = "def spin():\n    while True:\n        pass\n\ndef f():\n    return 42\n"


def _runs_in_a_thread(out: list):
    """A host function that calls ``fn`` on a thread of its own (which serves nothing
    of the sandbox's), appending the result or the error's type name to ``out``."""
    import threading

    def in_thread(fn):
        def run():
            try:
                out.append(fn())
            except Exception as exc:
                out.append(type(exc).__name__)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        t.join(30)
        return not t.is_alive()

    return in_thread


def test_a_call_from_a_thread_a_callback_started_has_its_own_wall_limit(sandbox_factory):
    """The thread serves nothing of the sandbox's: its call is outermost, and is
    stopped at the wall limit (not left to spin as if nested)."""
    out: list = []
    in_thread = _runs_in_a_thread(out)
    sb = sandbox_factory({"in_thread": in_thread}, limits=Limits(wall_seconds=1))
    sb.exec(SPIN)
    try:
        sb.eval("in_thread(spin)")
    except Exception:
        pass  # the sandbox is stopped: the outer call ends too
    assert out == ["SandboxTimeout"]


def test_a_callback_calling_back_into_a_spinning_sandbox_is_stopped_by_the_outer_limit(sandbox_factory):
    def relay(fn):
        return fn()

    sb = sandbox_factory({"relay": relay}, limits=Limits(wall_seconds=1))
    sb.exec(SPIN)
    start = time.monotonic()
    with pytest.raises(SandboxTimeout):
        sb.eval("relay(spin)")
    assert time.monotonic() - start < 30


def test_outermost_calls_after_a_failed_callback_keep_their_wall_limit(sandbox_factory):
    def boom(fn):
        fn()  # a nested call that works...
        raise KeyError("x")  # ... then the callback fails

    sb = sandbox_factory({"boom": boom}, limits=Limits(wall_seconds=1))
    mod = sb.load(SPIN, "spinmod")
    sb.exec(SPIN)
    for _ in range(3):
        with pytest.raises(RemoteError):
            sb.eval("boom(f)")
    with pytest.raises(SandboxTimeout):
        mod.spin()


def test_async_calls_in_flight_together_each_have_the_wall_limit():
    import asyncio

    from capbridge import AsyncSandbox

    async def main():
        async with AsyncSandbox(limits=Limits(wall_seconds=1)) as sb:
            mod = await sb.load(SPIN, "spinmod")
            return await asyncio.wait_for(
                asyncio.gather(sb.run(mod.f), sb.run(mod.spin), return_exceptions=True), 30)

    got = asyncio.run(main())
    assert got[0] == 42
    assert isinstance(got[1], SandboxTimeout)


def test_the_call_memo_is_not_used_for_audited_sessions_or_buffers():
    sender = SandboxSession()
    body = sender.encode_plain((int(Tag.CALL), 5, 0, 0, int(Op.CALL), "f", (1, "a"), {}))
    audited = HostSession(audit=lambda event: None)
    for _ in range(2):
        msg = audited.decode(body)
        assert msg[5:] == ("f", (1, "a"), {})
        assert audited._arg_bytes.pop(5) == len(body)  # every audited call is counted
    assert audited._calls == {}
    host = HostSession()
    first = host.decode(body)
    for other in (bytearray(body), memoryview(body)):
        assert host.decode(other) == first
    assert len(host._calls) == 1
    # What a remembered call hands out is never the first call's kwargs dict.
    again = host.decode(body)
    assert again == first and again[7] is not first[7]


@pytest.mark.parametrize("module", ["[]", "{}", "'datetime'", "'uuid'", "None"])
def test_an_object_whose_class_names_any_module_crosses_as_a_proxy(sb, module):
    # (The stdlib value types are recognised by their module first: a class may set
    # __module__ to anything, even something unhashable.)
    got = sb.eval(f"type('date', (), {{'__module__': {module}}})()")
    assert repr(got).startswith("<capbridge proxy of date")
    assert sb.eval("1 + 1") == 2


# --------------------------------------------------------------------------- cpus in pools

AFFINITY = "sorted(__import__('os').sched_getaffinity(0))"


def test_a_pool_places_every_sandbox_it_starts_and_refuses_bad_cpus_at_once():
    from capbridge import SandboxPool

    cpu = sorted(os.sched_getaffinity(0))[-1]
    pool = SandboxPool(1, cpus={cpu})
    try:
        for _ in range(3):  # the first, then ones the pool's thread started
            with pool.sandbox() as sb:
                assert sb.eval(AFFINITY) == [cpu]
    finally:
        pool.close()
    before = _server_children()
    with pytest.raises(ValueError, match="cannot be used"):
        SandboxPool(2, cpus={2**31})
    assert len(_settled(before)) <= 1


def test_an_async_sandbox_is_placed_and_refuses_bad_cpus():
    import asyncio

    from capbridge import AsyncSandbox

    cpu = sorted(os.sched_getaffinity(0))[0]

    async def main():
        async with AsyncSandbox(cpus={cpu}) as sb:
            placed = await sb.eval(AFFINITY)
        with pytest.raises(ValueError):
            async with AsyncSandbox(cpus={2**31}):
                pass
        return placed

    assert asyncio.run(main()) == [cpu]


def test_remembered_calls_read_the_same_from_split_and_joined_frames():
    from capbridge._protocol import NEED_DATA, FrameReader

    sender = SandboxSession()
    bodies = [sender.encode_plain((int(Tag.CALL), q, 0, 1, int(Op.CALL), "add", (q % 3, "x"), {}))
              for q in range(1, 40)]
    stream = b"".join(len(b).to_bytes(4, "big") + b for b in bodies)
    host, fresh = HostSession(), HostSession()
    seen = []
    for cut in (1, 7, 29, 64, len(stream)):  # reads of these sizes
        reader = FrameReader(1 << 20)
        for i in range(0, len(stream), cut):
            reader.feed(stream[i:i + cut])
            while (body := reader.next_frame()) is not NEED_DATA:
                seen.append((host.decode(body), fresh.decode(bytes(body))))
                fresh._calls.clear()  # always read afresh
    assert len(seen) == 5 * len(bodies)
    for got, want in seen:
        assert got == want
    assert 0 < len(host._calls) <= 3  # three distinct payloads, each remembered once


def test_the_cpu_budget_of_an_outermost_call_covers_what_its_callbacks_run(sandbox_factory):
    from capbridge import CallTimeout, CPULimitExceeded

    def relay(fn):
        return fn()

    sb = sandbox_factory({"relay": relay}, limits=Limits(call_cpu_seconds=0.3, cpu_seconds=None))
    sb.interrupt_grace = 0.5
    sb.exec(SPIN)
    with pytest.raises((CallTimeout, CPULimitExceeded), match="call_cpu_seconds=0.3"):
        sb.eval("relay(spin)")


def test_a_call_from_a_callbacks_thread_has_its_own_cpu_budget(sandbox_factory):
    out: list = []
    in_thread = _runs_in_a_thread(out)
    sb = sandbox_factory({"in_thread": in_thread}, limits=Limits(call_cpu_seconds=0.3, cpu_seconds=None))
    sb.interrupt_grace = 0.5
    sb.exec(SPIN)
    try:
        sb.eval("in_thread(spin)")
    except Exception:
        pass
    assert out and out[0] in ("CallTimeout", "CPULimitExceeded")


def test_a_standby_that_ended_is_seen_as_ended_before_it_is_handed_a_request():
    from sandbox_vm._forkserver import _running

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    pidfd = os.pidfd_open(child.pid)
    try:
        assert _running(pidfd)
        child.kill()  # our own child
        end = time.monotonic() + 10
        while _running(pidfd) and time.monotonic() < end:
            time.sleep(0.01)
        assert not _running(pidfd)
        assert child.poll() is not None or child.wait(5) is not None  # still there to be reaped
    finally:
        os.close(pidfd)
        child.kill()
        child.wait()
