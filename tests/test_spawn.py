"""The host's handle on a sandbox process: ``spawn``, ``SandboxProcess``, ``prestart``."""

from __future__ import annotations

import os
import signal

import pytest

from sandbox_vm import ExitStatus, SandboxConfig
from sandbox_vm import _spawn
from sandbox_vm._spawn import ForkServer, SandboxProcess, prestart, spawn, stats

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
NONE = SandboxConfig(confinement="none")


def read_hello(fd: int) -> tuple:
    """The sandbox's HELLO message, read and decoded as the host does."""
    from capbridge._host_session import HostSession

    return HostSession().decode(read_frame(fd))


def read_frame(fd: int) -> bytes:
    size = int.from_bytes(os.read(fd, 4), "big")
    body = b""
    while len(body) < size:
        chunk = os.read(fd, size - len(body))
        assert chunk
        body += chunk
    return body


def test_public_contract_of_spawn():
    proc = spawn(NONE)
    try:
        assert isinstance(proc, SandboxProcess)
        assert proc.pid > 0
        for name in ("rfd", "wfd", "out_fd", "err_fd"):
            assert getattr(proc, name) >= 0
        hello = read_hello(proc.rfd)
        assert hello[2][0] == "ok"
        assert proc.poll() is None
        assert proc.wait(0.01) is None
    finally:
        proc.close_fds()
    assert proc.wait(10) == ExitStatus(exitcode=0)  # EOF on the channel ends it
    assert (proc.rfd, proc.wfd, proc.out_fd, proc.err_fd) == (-1, -1, -1, -1)


def test_strict_sandbox_starts_locked_down():
    proc = spawn(SandboxConfig())
    try:
        hello = read_hello(proc.rfd)
        status, _, layers = hello[2]
        assert status == "ok", hello
        assert {name for name, in_force, _ in layers if in_force} >= {"rlimits", "landlock", "seccomp"}
        assert sorted(int(fd) for fd in os.listdir(f"/proc/{proc.pid}/fd")) == [0, 1, 2, 3, 4]
    finally:
        proc.kill()
        proc.close_fds()
    assert proc.wait(10) == ExitStatus(signal=signal.SIGKILL)


def test_stdout_and_stderr_arrive_on_their_pipes():
    fs = ForkServer(paths=(TESTS_DIR,), entry="_forkserver_children:obey")
    try:
        proc = fs.spawn(NONE)
        assert os.read(proc.rfd, 2) == b"up"
        os.write(proc.wfd, b"print hello")
        assert os.read(proc.rfd, 4) == b"done"
        assert os.read(proc.out_fd, 100) == b"hello\n"
        assert os.read(proc.err_fd, 100) == b"err:hello\n"
        proc.close_fds()
        assert proc.wait(10) == ExitStatus(exitcode=0)
    finally:
        fs.close()


def test_channel_pipes_are_large():
    import fcntl

    proc = spawn(NONE)
    try:
        assert fcntl.fcntl(proc.rfd, fcntl.F_GETPIPE_SZ) == _spawn.CHANNEL_PIPE_SIZE
        assert fcntl.fcntl(proc.wfd, fcntl.F_GETPIPE_SZ) == _spawn.CHANNEL_PIPE_SIZE
        for fd in (proc.rfd, proc.wfd, proc.out_fd, proc.err_fd):
            assert not os.get_inheritable(fd)
    finally:
        proc.close_fds()
        proc.wait(10)


def test_prestart_and_stats():
    prestart()
    info = stats()
    assert info["alive"] and info["server_pid"] > 0 and info["servers_started"] >= 1
    assert set(info) >= {"pid_namespace", "spawned", "live", "pending"}


def test_sandbox_process_has_no_public_way_to_forge_a_pid():
    proc = SandboxProcess(-1, -1, -1, -1)  # internal constructor: no pidfd, no process
    proc.kill()  # nothing to signal: a no-op, never os.kill(-1)
    assert proc.poll() is None
    proc.close_fds()


@pytest.mark.parametrize("pid_namespace", [True, False])
def test_both_pid_namespace_modes_start_sandboxes(pid_namespace):
    fs = ForkServer(pid_namespace=pid_namespace)
    try:
        proc = fs.spawn(NONE)
        read_frame(proc.rfd)
        assert fs.pid_namespace is (pid_namespace and fs.pid_namespace)
        if not pid_namespace:
            with open(f"/proc/{proc.pid}/status") as f:
                nspid = next(line for line in f if line.startswith("NSpid:")).split()[1:]
            assert nspid == [str(proc.pid)]
        proc.close_fds()
        assert proc.wait(10) == ExitStatus(exitcode=0)
    finally:
        fs.close()
