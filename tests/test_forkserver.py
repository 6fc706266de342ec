"""The fork server: a clean, empty-environment interpreter forking each sandbox."""

from __future__ import annotations

import os
import pickle
import signal
import statistics
import threading
import time

import pytest

from capbridge import SandboxError
from sandbox_vm import ExitStatus, SandboxConfig
from sandbox_vm import _forkserver as wire
from sandbox_vm import _spawn
from sandbox_vm._spawn import ForkServer

NONE = SandboxConfig(confinement="none")


@pytest.fixture
def runtime_server():
    """A private server whose children run the real ``child_main``."""
    fs = ForkServer()
    assert fs.ready(30)
    # The host writes the base Landlock paths to the server from a thread that closes
    # its pipe end when done: let it finish so fd counts compare like with like.
    for t in threading.enumerate():
        if t.name == "capbridge-landlock-paths":
            t.join(30)
    yield fs
    fs.close()


def read_exact(fd: int, n: int, timeout: float = 10.0) -> bytes:
    deadline = time.monotonic() + timeout
    out = b""
    while len(out) < n:
        assert time.monotonic() < deadline, f"timed out after {out!r}"
        chunk = os.read(fd, n - len(out))
        assert chunk, f"EOF after {out!r}"
        out += chunk
    return out


def started(fs: ForkServer) -> _spawn.SandboxProcess:
    proc = fs.spawn(NONE)
    assert read_exact(proc.rfd, 2) == b"up"
    return proc


def children_of(pid: int) -> list[tuple[int, str]]:
    """``(pid, state)`` of every process whose parent is ``pid``."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == pid:
            out.append((int(name), fields[0]))
    return out


def host_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


# -- a clean process ------------------------------------------------------------------

def test_child_sees_an_empty_environment(runtime_server, monkeypatch):
    monkeypatch.setenv("CAPBRIDGE_TEST_SECRET", "hunter2")
    fresh = ForkServer()  # started while the secret is in the host's environment
    try:
        proc = fresh.spawn(NONE)
        read_exact(proc.rfd, 4)  # HELLO's length: the runtime is serving
        with open(f"/proc/{proc.pid}/environ", "rb") as f:
            env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if item)
        assert b"CAPBRIDGE_TEST_SECRET" not in env
        assert set(env) <= {k.encode() for k in wire.SERVER_ENV}
        assert env[b"MALLOC_ARENA_MAX"] == b"2"
        proc.close_fds()
        assert proc.wait(10) == ExitStatus(exitcode=0)
    finally:
        fresh.close()


def test_child_is_a_fresh_interpreter_not_a_fork_of_the_host(server):
    proc = started(server)
    with open(f"/proc/{proc.pid}/cmdline", "rb") as f:
        argv = f.read().split(b"\0")
    assert b"-I" in argv and b"-S" in argv  # the server's command line, not pytest's
    assert os.readlink(f"/proc/{proc.pid}/cwd") == "/"
    with open(f"/proc/{proc.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    assert int(fields[2]) == int(fields[3]) == proc.pid  # pgrp, session: its own
    proc.close_fds()
    proc.wait(10)


def test_child_inherits_only_its_own_descriptors(server):
    leak = os.open(__file__, os.O_RDONLY)
    os.set_inheritable(leak, True)
    try:
        proc = started(server)
        fds = sorted(int(fd) for fd in os.listdir(f"/proc/{proc.pid}/fd"))
        assert fds == [0, 1, 2, 3, 4]
        assert os.readlink(f"/proc/{proc.pid}/fd/0") == "/dev/null"
        for fd in (1, 2, 3, 4):
            assert os.readlink(f"/proc/{proc.pid}/fd/{fd}").startswith("pipe:")
        mine = {os.readlink(f"/proc/self/fd/{fd}") for fd in (proc.rfd, proc.wfd, proc.out_fd, proc.err_fd)}
        theirs = {os.readlink(f"/proc/{proc.pid}/fd/{fd}") for fd in (1, 2, 3, 4)}
        assert mine == theirs  # the same four pipes, nothing else
        proc.close_fds()
        proc.wait(10)
    finally:
        os.close(leak)


def test_real_runtime_child_keeps_only_channel_and_stdio(runtime_server):
    proc = runtime_server.spawn(NONE)
    read_exact(proc.rfd, 4)
    assert sorted(int(fd) for fd in os.listdir(f"/proc/{proc.pid}/fd")) == [0, 1, 2, 3, 4]
    proc.close_fds()
    assert proc.wait(10) == ExitStatus(exitcode=0)


def test_each_child_has_its_own_pid_namespace(server):
    if not server.pid_namespace:
        pytest.skip("this kernel refuses unshare(CLONE_NEWPID) to the fork server")
    a, b = started(server), started(server)
    spaces = {os.readlink(f"/proc/{p.pid}/ns/pid") for p in (a, b)}
    assert len(spaces) == 2
    assert os.readlink(f"/proc/{server.server_pid}/ns/pid") not in spaces
    for p in (a, b):
        with open(f"/proc/{p.pid}/status") as f:
            nspid = next(line for line in f if line.startswith("NSpid:")).split()[1:]
        assert nspid == [str(p.pid), "1"]
        p.close_fds()
        p.wait(10)


def test_sandbox_cannot_name_the_server_or_host(server):
    if not server.pid_namespace:
        pytest.skip("this kernel refuses unshare(CLONE_NEWPID) to the fork server")
    for target in (server.server_pid, os.getpid()):
        proc = started(server)
        os.write(proc.wfd, f"signal {target}".encode())
        assert os.read(proc.rfd, 100) == b"ESRCH"  # no such process in its namespace
        proc.close_fds()
        proc.wait(10)


def test_server_is_not_dumpable(server):
    with open(f"/proc/{server.server_pid}/status") as f:
        assert "Uid:" in f.read()
    # non-dumpable processes' /proc entries belong to root:root
    st = os.stat(f"/proc/{server.server_pid}/environ")
    assert (st.st_uid, st.st_gid) == (0, 0)


# -- endings --------------------------------------------------------------------------

def test_exit_code_is_reported(server):
    proc = started(server)
    os.write(proc.wfd, b"exit 7")
    assert proc.wait(10) == ExitStatus(exitcode=7)
    assert proc.poll() == ExitStatus(exitcode=7)
    proc.close_fds()


def test_signal_is_reported(server):
    proc = started(server)
    os.write(proc.wfd, b"segv")
    assert proc.wait(10) == ExitStatus(signal=signal.SIGSEGV)
    proc.close_fds()


def test_kill_is_idempotent(server):
    proc = started(server)
    assert proc.poll() is None
    assert proc.wait(0.05) is None
    proc.kill()
    proc.kill()
    assert proc.wait(10) == ExitStatus(signal=signal.SIGKILL)
    proc.kill()
    proc.close_fds()
    proc.close_fds()
    proc.kill()


def test_kill_still_works_after_close_fds(server):
    proc = started(server)
    os.write(proc.wfd, b"sleep")
    proc.close_fds()  # the pidfd stays until the process has ended
    assert proc.wait(0.2) is None
    proc.kill()
    assert proc.wait(10) == ExitStatus(signal=signal.SIGKILL)


class Unknown(SandboxConfig):
    """A config class the runtime server cannot import (tests/ is not on its path)."""


def test_spawn_failure_in_the_server_is_a_sandbox_error(runtime_server):
    before = host_fds()
    with pytest.raises(SandboxError, match="could not start a sandbox: ModuleNotFoundError"):
        runtime_server.spawn(Unknown(confinement="none"))
    assert host_fds() == before
    proc = runtime_server.spawn(NONE)  # still serving
    read_exact(proc.rfd, 4)
    proc.close_fds()
    proc.wait(10)


# -- the server's life ----------------------------------------------------------------

def test_killed_server_is_replaced_transparently(monkeypatch):
    monkeypatch.setattr(_spawn, "_default", None)
    first = _spawn.spawn(NONE)
    read_exact(first.rfd, 4)
    old = _spawn._default
    assert old is not None and old.ready(10)
    os.kill(old.server_pid, signal.SIGKILL)  # the server this test started
    assert first.wait(10) == ExitStatus(signal=signal.SIGKILL)  # died with its server
    first.close_fds()
    deadline = time.monotonic() + 10
    while old.alive and time.monotonic() < deadline:
        time.sleep(0.01)
    second = _spawn.spawn(NONE)
    try:
        read_exact(second.rfd, 4)
        new = _spawn._default
        assert new is not old and new.server_pid != old.server_pid
        assert _spawn.stats()["alive"]
    finally:
        second.close_fds()
        second.wait(10)
        new.close()


def test_host_fork_does_not_share_the_server(monkeypatch):
    monkeypatch.setattr(_spawn, "_default", None)
    _spawn.prestart()
    parent_server = _spawn._default
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the forked host
        code = 1
        try:
            proc = _spawn.spawn(NONE)
            read_exact(proc.rfd, 4)
            mine = _spawn._default
            os.write(w, str(mine.server_pid).encode())
            proc.close_fds()
            proc.wait(10)
            _spawn._stop_all()
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    child_server = int(os.read(r, 100) or b"0")
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert child_server not in (0, parent_server.server_pid)
    proc = _spawn.spawn(NONE)  # the parent's server still serves
    read_exact(proc.rfd, 4)
    proc.close_fds()
    proc.wait(10)
    parent_server.close()


def test_close_stops_server_and_its_sandboxes(server):
    proc = started(server)
    os.write(proc.wfd, b"hang")
    server_pid = server.server_pid
    server.close()
    assert proc.wait(10) == ExitStatus(signal=signal.SIGKILL)
    assert not server.alive
    assert not os.path.exists(f"/proc/{server_pid}")  # reaped
    proc.close_fds()


# -- load -----------------------------------------------------------------------------

def test_fifty_sandboxes_leave_no_zombies_or_descriptors(runtime_server):
    procs = [runtime_server.spawn(NONE) for _ in range(5)]  # warm the reader up
    for p in procs:
        read_exact(p.rfd, 4)
        p.close_fds()
        p.wait(10)
    before = host_fds()
    spawned = set()
    for i in range(50):
        proc = runtime_server.spawn(NONE)
        spawned.add(proc.pid)
        read_exact(proc.rfd, 4)
        if i % 2:
            proc.kill()
        proc.close_fds()
        assert proc.wait(10) is not None
    assert host_fds() == before
    assert runtime_server.stats()["live"] == 0

    def left() -> list[tuple[int, str]]:
        return [c for c in children_of(runtime_server.server_pid) if c[0] in spawned or c[1] == "Z"]

    deadline = time.monotonic() + 5
    while left() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert left() == []
    assert len(children_of(runtime_server.server_pid)) <= 1  # the standby for the next request
    assert [c for c in children_of(os.getpid()) if c[1] == "Z"] == []


def test_concurrent_spawns_from_eight_threads(runtime_server):
    results: list[ExitStatus | None] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work() -> None:
        try:
            for _ in range(5):
                proc = runtime_server.spawn(NONE)
                read_exact(proc.rfd, 4)
                proc.close_fds()
                status = proc.wait(10)
                with lock:
                    results.append(status)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert results == [ExitStatus(exitcode=0)] * 40
    assert runtime_server.stats()["spawned"] == 40


def test_warm_start_is_fast(runtime_server):
    times = []
    for _ in range(20):
        start = time.perf_counter()
        proc = runtime_server.spawn(NONE)
        read_exact(proc.rfd, 4)
        times.append(time.perf_counter() - start)
        proc.close_fds()
        proc.wait(10)
    assert statistics.median(times) < 0.05  # a few ms in practice; loose for slow CI


def test_spawn_request_is_one_packet():
    blob = pickle.dumps(NONE)
    msg = wire.encode_spawn(42, blob)
    assert msg[:1] == wire.SPAWN and int.from_bytes(msg[1:9], "big") == 42 and msg[9:] == blob
    assert wire.decode_exit(wire.EXIT + (7).to_bytes(4, "big") + (9).to_bytes(4, "big") + (5).to_bytes(8, "big")) == (7, 9, 5)
    assert wire.decode_failed(wire.FAILED + (3).to_bytes(8, "big") + b"no") == (3, "no")


def test_oversized_config_is_refused_before_sending(server):
    huge = SandboxConfig(confinement="none", allow_imports=tuple(f"module_{i}" for i in range(10000)))
    before = host_fds()
    with pytest.raises(SandboxError, match="fit in a spawn request"):
        server.spawn(huge)
    assert host_fds() == before


def test_malformed_requests_do_not_break_the_server(server):
    server._sock.send(b"Z")  # unknown kind, no descriptors
    server._sock.send(wire.encode_spawn(999, pickle.dumps(NONE)))  # spawn without fds
    proc = started(server)
    assert server.alive
    proc.close_fds()
    assert proc.wait(10) == ExitStatus(exitcode=0)


# What a fork server imports before its first sandbox: the essential set, the child's
# entry, the server's own needs and what preparing a Landlock ruleset may load.
_BEFORE_FIRST_SPAWN = (
    "import sys\n"
    "sys.path[:0] = sys.argv[1:]\n"
    "import ctypes, select, _socket\n"
    "from sandbox_vm import _forkserver\n"
    "import sandbox_vm._templates, sandbox_vm._child, sandbox_vm._packages\n"
    "for name in _forkserver._ESSENTIAL:\n"
    "    __import__(name)\n"
    "print(' '.join(sorted(sys.modules)))\n"
)
# Modules that cost a fresh interpreter milliseconds each and that no sandbox needs to
# start: the server imports them while idle (_WARM) or never.
_HEAVY = ("dataclasses", "inspect", "ast", "dis", "typing", "uuid", "platform",
          "datetime", "decimal", "fractions", "pickletools", "subprocess", "socket", "importlib.metadata")


def test_fork_server_starts_without_heavy_modules():
    import subprocess

    command = wire.server_command(0, [], "")
    interpreter = command[: command.index("-c")]  # python -I -S ..., as the server runs
    out = subprocess.run([*interpreter, "-c", _BEFORE_FIRST_SPAWN, *wire.server_paths()],
                         capture_output=True, text=True, env=dict(wire.SERVER_ENV), cwd="/", timeout=60)
    assert out.returncode == 0, out.stderr
    loaded = set(out.stdout.split())
    assert "capbridge._sandbox_session" in loaded and "sandbox_vm._lockdown" in loaded
    assert not loaded & set(_HEAVY), sorted(loaded & set(_HEAVY))
