"""The fork server's standby child: forked while idle, handed the next spawn request."""

from __future__ import annotations

import os
import time

import pytest

from capbridge import Sandbox
from sandbox_vm import SandboxConfig
from sandbox_vm import _spawn
from sandbox_vm._spawn import ForkServer

NONE = SandboxConfig(confinement="none")
STRICT = SandboxConfig()  # the obey entry does not lock down: only the server's routing differs


def children_of(pid: int) -> set[int]:
    out = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                out.add(int(name))
    return out


def standby_of(server_pid: int, busy: set[int] = frozenset(), timeout: float = 10.0) -> int:
    """The one child of the server that is not among ``busy``, once it is there."""
    deadline = time.monotonic() + timeout
    while True:
        idle = children_of(server_pid) - set(busy)
        if len(idle) == 1:
            return idle.pop()
        assert time.monotonic() < deadline, f"no single standby child: {idle}"
        time.sleep(0.01)


def gone(fs: ForkServer, pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while pid in children_of(fs.server_pid):
        assert time.monotonic() < deadline, f"{pid} is still there"
        time.sleep(0.01)


def started(fs: ForkServer, config: SandboxConfig = STRICT) -> _spawn.SandboxProcess:
    proc = fs.spawn(config)
    assert os.read(proc.rfd, 2) == b"up"
    return proc


def end(proc: _spawn.SandboxProcess) -> None:
    proc.kill()
    proc.close_fds()
    assert proc.wait(10) is not None


def test_the_next_request_is_served_by_the_standby(server):
    standby = standby_of(server.server_pid)
    proc = started(server)
    assert proc.pid == standby
    end(proc)
    retired = standby_of(server.server_pid)
    first = started(server, NONE)  # forked afresh: the standby had unshared namespaces
    assert first.pid != retired
    gone(server, retired)  # it was ended: of no use to "none" requests
    standby = standby_of(server.server_pid, busy={first.pid})
    proc = started(server, NONE)
    assert proc.pid == standby
    assert sorted(int(fd) for fd in os.listdir(f"/proc/{proc.pid}/fd")) == [0, 1, 2, 3, 4]
    end(first)
    # Another standby follows, and serves the request after.
    second = standby_of(server.server_pid, busy={proc.pid})
    assert second != proc.pid
    other = started(server)
    assert other.pid == second
    end(proc)
    end(other)


def test_the_standby_waits_without_pipes_or_pidfds(server):
    procs = [started(server) for _ in range(3)]  # siblings whose pipes and pidfds the server holds
    standby = standby_of(server.server_pid, busy={p.pid for p in procs})
    deadline = time.monotonic() + 10
    while True:  # it closes what it inherited right after the fork
        links = [os.readlink(f"/proc/{standby}/fd/{fd}") for fd in os.listdir(f"/proc/{standby}/fd")]
        held = [link for link in links if link.startswith("pipe:") or "pidfd" in link]
        if not held:
            break
        assert time.monotonic() < deadline, held
        time.sleep(0.01)
    assert links.count("/dev/null") >= 8 and len(links) <= 14, links
    for p in procs:
        end(p)


def test_a_config_prepared_after_the_standby_forked_gets_a_fresh_fork(server):
    standby = standby_of(server.server_pid)
    # A Landlock ruleset for cloudpickle is prepared (and its fd inherited) only now.
    other = SandboxConfig(confinement="strict", allow_imports=("cloudpickle",))
    proc = started(server, other)
    assert proc.pid != standby
    assert standby in children_of(server.server_pid)  # still waiting for its request
    assert started(server).pid == standby
    end(proc)


def namespaces_of(pid: int) -> dict[str, str]:
    return {kind: os.readlink(f"/proc/{pid}/ns/{kind}") for kind in ("user", "net", "ipc", "mnt", "uts")}


def test_the_standby_unshares_namespaces_ahead_unless_the_last_request_was_none(server):
    mine = namespaces_of(os.getpid())
    standby = standby_of(server.server_pid)
    deadline = time.monotonic() + 10
    while set(namespaces_of(standby).values()) & set(mine.values()):  # it is getting there
        assert time.monotonic() < deadline, namespaces_of(standby)
        time.sleep(0.01)
    # A confinement="none" request is not given a standby with namespaces: that one
    # is ended, and the next standby keeps the host's namespaces.
    plain = started(server, NONE)
    assert plain.pid != standby and namespaces_of(plain.pid) == mine
    gone(server, standby)
    second = standby_of(server.server_pid, busy={plain.pid})
    assert second != standby
    time.sleep(0.2)
    assert namespaces_of(second) == mine
    proc = started(server, NONE)
    assert proc.pid == second
    for p in (plain, proc):
        end(p)
    assert server.stats()["live"] == 0


def test_a_killed_standby_is_replaced_and_never_reported(server):
    standby = standby_of(server.server_pid)
    os.kill(standby, 9)
    gone(server, standby)
    replacement = standby_of(server.server_pid)
    assert replacement != standby
    proc = started(server)
    assert proc.pid == replacement
    assert server.stats()["live"] == 1
    end(proc)
    assert server.stats()["live"] == 0


ATTEMPT = """
import os, socket

def attempt(f):
    try:
        f()
    except OSError as exc:
        return type(exc).__name__
    return "allowed"
"""


def test_a_strict_sandbox_from_the_standby_is_fully_confined():
    _spawn.prestart()
    server_pid = _spawn.stats()["server_pid"]
    for _ in range(50):
        before = children_of(server_pid)
        sb = Sandbox(confinement="strict")
        if sb.pid in before:  # its process was there before the request: the standby
            break
        sb.close()  # forked afresh (no standby yet): try again
        time.sleep(0.05)
    else:
        pytest.fail("no strict sandbox was served by the standby")
    with sb:
        assert sb.missing_layers == ()
        assert [layer[0] for layer in sb.confinement_report] == [
            "close_fds", "namespaces", "rlimits", "landlock", "seccomp"]
        assert "unshared user,net,ipc,mount,uts" in sb.confinement_report[1][2]
        assert sb.eval("__import__('os').getuid()") == 65534  # a user namespace without a uid map
        sb.exec(ATTEMPT)
        # seccomp, installed from the program the server compiled ahead of time
        assert sb.eval("attempt(lambda: os.fork() or None)") == "PermissionError"
        assert sb.eval("attempt(lambda: socket.socket().close())") == "PermissionError"
        # Landlock
        assert sb.eval("attempt(lambda: open('/etc/passwd').read())") == "PermissionError"
        assert sb.eval("1 + 1") == 2


def test_a_strict_sandbox_from_a_standby_without_pid_namespaces_is_fully_confined(monkeypatch):
    server = ForkServer(pid_namespace=False)
    try:
        assert server.ready(30)
        monkeypatch.setattr(_spawn, "spawn", server.spawn)
        for _ in range(50):
            before = children_of(server.server_pid)
            sb = Sandbox(confinement="strict")
            if sb.pid in before:
                break
            sb.close()
            time.sleep(0.05)
        else:
            pytest.fail("no strict sandbox was served by the standby")
        with sb:
            assert sb.missing_layers == ()
            sb.exec(ATTEMPT)
            # the filter it compiled while waiting lets it signal itself, nothing else
            assert sb.eval("attempt(lambda: os.kill(os.getpid(), 0))") == "allowed"
            assert sb.eval(f"attempt(lambda: os.kill({os.getpid()}, 0))") == "PermissionError"
            assert sb.eval("attempt(lambda: os.fork() or None)") == "PermissionError"
            assert sb.eval("attempt(lambda: socket.socket().close())") == "PermissionError"
    finally:
        server.close()


def test_namespaces_unshared_ahead_are_reported_once_for_the_same_kinds(monkeypatch):
    from sandbox_vm import _namespaces

    calls = []
    monkeypatch.setattr(_namespaces, "unshare", lambda flags: calls.append(flags) or 0)
    monkeypatch.setattr(_namespaces, "_AHEAD", None)
    kinds = tuple(_namespaces.KINDS)
    _namespaces.unshare_ahead(kinds)
    assert len(calls) == 1
    assert _namespaces.unshare_all(kinds).taken == list(kinds)
    assert len(calls) == 1  # reported, not unshared again
    _namespaces.unshare_all(kinds)
    assert len(calls) == 2  # only the first lockdown after it
    _namespaces.unshare_ahead(kinds)
    _namespaces.unshare_all(("user", "net"))
    assert len(calls) == 4  # other kinds: unshared as asked
    monkeypatch.setattr(_namespaces, "_AHEAD", (os.getpid() + 1, kinds, _namespaces.NamespaceResult()))
    _namespaces.unshare_all(kinds)
    assert len(calls) == 5  # another process's record is not this one's
