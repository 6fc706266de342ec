"""What a person sees in a traceback: the caller's frames, then the user code the
error came from; no frame of capbridge, sandbox_vm or the machinery they drive
(``debug=True`` keeps them all). Each case prints the text ``traceback.print_exc()``
would show and checks it."""

import asyncio
import os
import traceback

import pytest

import capbridge
from capbridge import (AsyncSandbox, CallTimeout, CapabilityError, Limits, RemoteError,
                       RevokedError, SandboxError, SandboxPool, SandboxTimeout, expose, revocable)
from capbridge._tracebacks import machinery_prefixes

from conftest import CONFINEMENT, make_sandbox

HERE = os.path.abspath(__file__)
CAPBRIDGE_DIR = os.path.dirname(os.path.abspath(capbridge.__file__)) + os.sep
VM_DIR = os.path.join(os.path.dirname(CAPBRIDGE_DIR.rstrip(os.sep)), "sandbox_vm") + os.sep


class Service:
    @expose
    def boom(self):
        raise ValueError("host boom")

    @expose
    def ok(self):
        return 1


def printed(fn):
    """(exception, the text traceback.print_exc() shows) for what ``fn()`` raises."""
    try:
        fn()
    except BaseException as exc:  # noqa: BLE001 - KeyboardInterrupt cases too
        text = traceback.format_exc()
        print(text)
        return exc, text
    raise AssertionError("nothing was raised")


def frame_files(text):
    return [line.split('"')[1] for line in text.splitlines() if line.startswith('  File "')]


def assert_user_frames_only(text):
    """No frame of capbridge's own code or the machinery; the test's frame comes first."""
    files = frame_files(text)
    assert files and files[0] == HERE, text
    for name in files:
        assert not name.startswith(machinery_prefixes()), text
        assert "<sandbox:" + CAPBRIDGE_DIR not in name and "<sandbox:" + VM_DIR not in name, text
    assert "^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^" not in text  # no carets under internals


def last_frames(text, n):
    """The last ``n`` frames as (file, function) pairs."""
    out = []
    for line in text.splitlines():
        if line.startswith('  File "'):
            out.append((line.split('"')[1], line.rsplit(" in ", 1)[1]))
    return out[-n:]


def test_eval_ends_with_the_sandbox_frame(sb):
    exc, text = printed(lambda: sb.eval("1/0"))
    assert isinstance(exc, RemoteError) and exc.type_name == "ZeroDivisionError"
    assert_user_frames_only(text)
    assert last_frames(text, 1) == [("<sandbox:sandbox>", "<module>")]
    assert text.rstrip().endswith("capbridge.RemoteError: ZeroDivisionError: division by zero")


def test_exec_shows_the_sandbox_source_line_without_carets(sb):
    exc, text = printed(lambda: sb.exec("x = 1\nraise ValueError(x)"))
    assert_user_frames_only(text)
    lines = text.splitlines()
    at = lines.index('  File "<sandbox:sandbox>", line 2, in <module>')
    assert lines[at + 1] == "    raise ValueError(x)"
    assert lines[at + 2].startswith("capbridge.RemoteError")  # no caret line: columns are unknown


def test_frames_show_their_own_lines_when_runs_share_a_file_name(sb):
    sb.exec("def g():\n    return 1 + None\n")
    sb.exec("x = 1\ny = 2\nz = 3\n")  # a later run under the same name, <sandbox>
    exc, text = printed(lambda: sb.eval("g()"))
    lines = text.splitlines()
    at = lines.index('  File "<sandbox:sandbox>", line 2, in g')
    assert lines[at + 1] == "    return 1 + None", text
    assert "y = 2" not in text


def test_loaded_function_shows_every_sandbox_frame(sb):
    plugin = sb.load("def f(x):\n    return g(x)\ndef g(x):\n    return x / 0\n", name="plugin")
    exc, text = printed(lambda: plugin.f(3))
    assert_user_frames_only(text)
    assert last_frames(text, 2) == [("<sandbox:plugin>", "f"), ("<sandbox:plugin>", "g")]
    assert "    return x / 0\n" in text and "~^~" not in text


def test_shipped_function(sb):
    def shipped():
        raise KeyError("shipped")

    exc, text = printed(lambda: sb.call(shipped))
    assert_user_frames_only(text)
    assert last_frames(text, 1)[0][1] == "shipped"


def test_proxy_attribute_and_callable_proxy(sb):
    plugin = sb.load("class C:\n    def __call__(self):\n        raise OSError('c')\nc = C()\n", name="p2")
    exc, text = printed(lambda: plugin.nope)
    assert_user_frames_only(text)
    assert "RemoteTraceback" not in text  # nothing but capbridge's frames was left to show
    c = plugin.c
    exc, text = printed(lambda: c())
    assert_user_frames_only(text)
    assert last_frames(text, 1) == [("<sandbox:p2>", "__call__")]


def test_iterating_a_proxy_that_raises(sb):
    sb.exec("def gen():\n    yield 1\n    raise RuntimeError('mid')\n")
    it = sb.eval("gen()")
    exc, text = printed(lambda: list(it))
    assert "RuntimeError" in str(exc)
    files = frame_files(text)
    assert files[0] == HERE and not any(f.startswith(CAPBRIDGE_DIR) for f in files), text


def test_host_method_raising_as_the_sandbox_sees_it(sandbox_factory):
    out = []
    sb = sandbox_factory({"svc": Service()}, stderr=out.append)
    sb.exec("import traceback\n"
            "def h():\n"
            "    svc.boom()\n"
            "try:\n"
            "    h()\n"
            "except ValueError:\n"
            "    traceback.print_exc()\n"
            "try:\n"
            "    svc.nope\n"
            "except AttributeError:\n"
            "    traceback.print_exc()\n")
    text = "".join(out)
    print(text)
    assert '  File "<sandbox>", line 3, in h\n    svc.boom()\nValueError: host boom\n' in text
    assert "_proxy.py" not in text and "_channel.py" not in text and "sandbox_vm" not in text
    assert "Service has no exposed attribute 'nope'" in text
    # What reaches the host when it is not caught there.
    exc, host_text = printed(lambda: sb.exec("def h():\n    svc.boom()\nh()"))
    assert_user_frames_only(host_text)
    assert last_frames(host_text, 2) == [("<sandbox:sandbox>", "<module>"), ("<sandbox:sandbox>", "h")]


def test_capability_error_at_the_front_door(sb):
    exc, text = printed(lambda: sb.call(lambda x: x, object()))
    assert isinstance(exc, CapabilityError)
    assert_user_frames_only(text)
    assert last_frames(text, 1)[0][0] == HERE


def test_revoked_capability(sandbox_factory):
    cap, revoke = revocable(Service())
    sb = sandbox_factory({"cap": cap})
    sb.exec("keep = cap")
    revoke()
    exc, text = printed(lambda: sb.exec("keep.ok()"))
    assert "RevokedError" in str(exc)
    assert_user_frames_only(text)
    exc, text = printed(lambda: sb.eval("keep"))
    assert isinstance(exc, RevokedError)
    assert_user_frames_only(text)


def test_call_timeout_and_sandbox_timeout(sandbox_factory):
    sb = sandbox_factory()
    exc, text = printed(lambda: sb.exec("while True:\n    pass", timeout=0.5))
    assert type(exc) is CallTimeout
    assert_user_frames_only(text.split("The above exception was the direct cause")[-1])
    assert not any(f.startswith(CAPBRIDGE_DIR) for f in frame_files(text))
    stubborn = sandbox_factory(limits=Limits(wall_seconds=1))
    stubborn.interrupt_grace = 0.2
    exc, text = printed(lambda: stubborn.exec(
        "while True:\n    try:\n        while True:\n            pass\n    except BaseException:\n        pass"))
    assert type(exc) is SandboxTimeout
    assert_user_frames_only(text)
    exc, text = printed(lambda: stubborn.eval("1"))
    assert isinstance(exc, SandboxError)
    assert not any(f.startswith(CAPBRIDGE_DIR) for f in frame_files(text)), text


def test_closed_sandbox_and_bad_arguments(sandbox_factory):
    sb = sandbox_factory()
    exc, text = printed(lambda: sb.exec(b"bytes"))
    assert isinstance(exc, TypeError)
    assert_user_frames_only(text)
    sb.close()
    exc, text = printed(lambda: sb.eval("1"))
    assert isinstance(exc, SandboxError)
    assert_user_frames_only(text)
    exc, text = printed(lambda: make_sandbox(confinement="nope"))
    assert isinstance(exc, ValueError)
    assert_user_frames_only(text)


def test_execute_error_is_trimmed_too(sb):
    run = sb.execute("1/0")
    text = "".join(traceback.format_exception(run.error))
    print(text)
    assert not any(f.startswith(CAPBRIDGE_DIR) for f in frame_files(text)), text
    assert last_frames(text, 1) == [("<sandbox:sandbox>", "<module>")]


def test_gather(sandbox_factory):
    a, b = sandbox_factory(), sandbox_factory()
    pa = a.load("def f(x):\n    return x\n", name="pa")
    pb = b.load("def f(x):\n    raise KeyError(x)\n", name="pb")
    exc, text = printed(lambda: capbridge.gather([(pa.f, 1), (pb.f, 2)]))
    assert_user_frames_only(text)
    assert last_frames(text, 1) == [("<sandbox:pb>", "f")]

    def host_fn():
        raise LookupError("host")

    exc, text = printed(lambda: capbridge.gather([(pa.f, 1), host_fn]))
    assert_user_frames_only(text)
    assert last_frames(text, 1) == [(HERE, "host_fn")]
    out = capbridge.gather([(pa.f, 1), (pb.f, 2)], return_exceptions=True)
    text = "".join(traceback.format_exception(out[1]))
    assert not any(f.startswith(CAPBRIDGE_DIR) for f in frame_files(text)), text


def test_async_sandbox():
    async def main():
        async with AsyncSandbox(confinement=CONFINEMENT) as sb:
            await sb.exec("raise ValueError('async')")

    exc, text = printed(lambda: asyncio.run(main()))
    assert "ValueError: async" in str(exc)
    files = frame_files(text)
    assert files[0] == HERE
    assert not any(f.startswith(machinery_prefixes()[:2]) for f in files), text
    mine = [f for f in files if f == HERE]
    assert len(mine) == 3  # printed(), the lambda, main()
    assert last_frames(text, 2) == [(HERE, "main"), ("<sandbox:sandbox>", "<module>")]


def test_pool():
    with SandboxPool(1, confinement=CONFINEMENT) as pool:
        def use():
            with pool.sandbox() as sb:
                sb.exec("1/0")

        exc, text = printed(use)
        assert_user_frames_only(text)
        assert last_frames(text, 2) == [(HERE, "use"), ("<sandbox:sandbox>", "<module>")]
    exc, text = printed(lambda: pool.take())
    assert isinstance(exc, SandboxError)
    assert_user_frames_only(text)

    def closed_checkout():
        with pool.sandbox():
            pass

    exc, text = printed(closed_checkout)
    assert_user_frames_only(text)
    assert "contextlib" not in text


def test_debug_keeps_every_frame(sandbox_factory):
    sb = sandbox_factory({"svc": Service()}, debug=True)
    exc, text = printed(lambda: sb.exec("def h():\n    svc.boom()\nh()"))
    files = frame_files(text)
    assert any(f.startswith(CAPBRIDGE_DIR) for f in files), text  # the host's own frames
    assert any(f.startswith("<sandbox:" + CAPBRIDGE_DIR) for f in files), text  # the sandbox's
    plugin = sb.load("def f():\n    raise KeyError(1)\n", name="dbg")
    exc, text = printed(plugin.f)
    assert any(f.startswith(CAPBRIDGE_DIR) for f in frame_files(text)), text


def test_ctrl_c_during_a_call_raises_keyboard_interrupt(sandbox_factory):
    """Ctrl-C while the host waits for a reply: the program sees KeyboardInterrupt (not
    a crashed sandbox), with the caller's frames only; the sandbox, whose reply was
    cut off, is killed and says why when used again."""
    import signal
    import threading

    sb = sandbox_factory()
    other = sandbox_factory()
    sb.exec("import sys\nprint('ready', flush=True, file=sys.stderr)")
    timer = threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    try:
        exc, text = printed(lambda: sb.exec("while True:\n    pass", timeout=60))
    finally:
        timer.cancel()
    assert type(exc) is KeyboardInterrupt, text
    assert_user_frames_only(text)
    assert not sb.alive
    exc, text = printed(lambda: sb.eval("1"))
    assert isinstance(exc, SandboxError) and "KeyboardInterrupt" in str(exc)
    assert other.eval("6 * 7") == 42  # nothing else is touched


@pytest.mark.parametrize("n", [1, 200])
def test_trim_is_bounded_and_never_raises(n):
    from capbridge._tracebacks import trim

    exc = ValueError("x")
    link = exc
    for _ in range(n):
        nxt = ValueError("y")
        link.__context__ = nxt
        link = nxt
    link.__context__ = exc  # a cycle
    trim(exc)
