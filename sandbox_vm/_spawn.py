"""Starting sandbox processes from the fork server, and the host's handles on them.

One :class:`ForkServer` per host process (started lazily, restarted if it died,
stopped at exit, never shared across ``os.fork``) turns :func:`spawn` into one
packet each way. A reader thread routes the server's replies and exit notices to
the :class:`SandboxProcess` objects; see :mod:`sandbox_vm._forkserver` for the wire.
"""

from __future__ import annotations

import array
import atexit
import fcntl
import itertools
import os
import pickle
import select
import signal
import subprocess
import sys
import threading
import weakref

# The C module: socket.py turns its constants into enums at import, which costs the
# first sandbox of a process milliseconds before the fork server can start.
import _socket

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable

from . import _forkserver as wire
from ._config import ExitStatus, SandboxConfig

__all__ = ["ForkServer", "SandboxProcess", "ensure_server", "prestart", "spawn", "stats"]

CHANNEL_PIPE_SIZE = 1 << 20
SPAWN_TIMEOUT = 30.0  # seconds the server may take to answer a spawn (cold start included)


class SandboxProcess:
    """The host's handle on one sandbox process.

    ``rfd`` reads the sandbox's frames, ``wfd`` writes frames to it, ``out_fd`` and
    ``err_fd`` read its stdout and stderr. ``pid`` is in the host's PID namespace.
    Made by :func:`spawn` only.
    """

    def __init__(self, rfd: int, wfd: int, out_fd: int, err_fd: int) -> None:
        self.pid = -1
        self.rfd, self.wfd, self.out_fd, self.err_fd = rfd, wfd, out_fd, err_fd
        self._pidfd = -1
        self._status: ExitStatus | None = None
        self._ended = threading.Event()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        state = self._status or "running"
        return f"<SandboxProcess pid={self.pid} {state}>"

    def poll(self) -> ExitStatus | None:
        """How it ended, or ``None`` while it runs."""
        return self._status

    def wait(self, timeout: float | None = None) -> ExitStatus | None:
        """Block until it ends (or ``timeout`` seconds pass: then ``None``)."""
        self._ended.wait(timeout)
        return self._status

    def kill(self) -> None:
        """SIGKILL it through its pidfd (no pid-reuse race); idempotent."""
        with self._lock:
            if self._status is None and self._pidfd >= 0:
                try:
                    signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def running(self) -> bool:
        """Whether the process still runs, asked of its pidfd (which becomes readable
        the moment the process exits, before the fork server reports it)."""
        with self._lock:
            if self._status is not None or self._pidfd < 0:
                return False
            return not select.select([self._pidfd], [], [], 0)[0]

    def using_pidfd(self, fn: "Callable[[int], object]") -> bool:
        """Call ``fn(pidfd)`` unless the process has been reaped; the pidfd cannot be
        closed (and its number reused) meanwhile. False when it was not called."""
        with self._lock:
            if self._status is not None or self._pidfd < 0:
                return False
            fn(self._pidfd)
            return True

    def close_fds(self) -> None:
        """Close the host's pipe ends; the pidfd goes when the process has ended."""
        with self._lock:
            for name in ("rfd", "wfd", "out_fd", "err_fd"):
                fd = getattr(self, name)
                if fd >= 0:
                    setattr(self, name, -1)
                    _close(fd)

    def _started(self, pid: int, pidfd: int) -> None:
        with self._lock:
            self.pid, self._pidfd = pid, pidfd

    def _set_ended(self, status: ExitStatus) -> None:
        with self._lock:
            if self._status is not None:
                return
            self._status = status
            if self._pidfd >= 0:
                _close(self._pidfd)
                self._pidfd = -1
        self._ended.set()

    def __del__(self) -> None:
        for fd in (self.rfd, self.wfd, self.out_fd, self.err_fd):
            if fd >= 0:
                _close(fd)


class _ServerGone(Exception):
    """The fork server died or was closed before it answered."""


class _Pending:
    __slots__ = ("proc", "done", "error", "gone")

    def __init__(self, proc: SandboxProcess) -> None:
        self.proc = proc
        self.done = threading.Event()
        self.error = ""
        self.gone = False


_instances: "weakref.WeakSet[ForkServer]" = weakref.WeakSet()


class ForkServer:
    """A running fork server and the reader thread that listens to it.

    ``pid_namespace=False`` turns the per-sandbox PID namespace off; ``paths`` are
    extra import directories; ``entry`` (``"module:function"``, tests only) replaces
    :func:`sandbox_vm._child.child_main` as what each child runs. None of these can
    be reached from a sandbox: they are fixed when the server starts.
    """

    def __init__(self, *, pid_namespace: bool = True, paths: tuple[str, ...] = (),
                 entry: str | None = None) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._live: dict[int, SandboxProcess] = {}
        self._hello = threading.Event()
        self._gone = False
        self.server_pid = -1
        self.flags = 0
        self.spawned = 0
        self.owner = os.getpid()
        import_path = wire.server_paths(paths)
        # The base Landlock paths take the server tens of milliseconds to work out
        # (ELF dependencies of the standard library's extensions): this process does
        # it meanwhile, while the server's interpreter starts, and hands them over.
        base_r, base_w = os.pipe2(os.O_CLOEXEC)
        options = ",".join(
            (["nopidns"] if not pid_namespace else []) + ([f"entry={entry}"] if entry else [])
            + [f"base={base_r}"]
        )
        host, child = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
        try:
            self._popen = subprocess.Popen(
                wire.server_command(child.fileno(), import_path, options),
                env=dict(wire.SERVER_ENV),
                cwd="/",
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                pass_fds=(child.fileno(), base_r),
                close_fds=True,
                start_new_session=True,
            )
        except BaseException:
            host.close()
            _close(base_w)
            raise
        finally:
            child.close()
            _close(base_r)
        threading.Thread(target=_send_base_paths, args=(base_w, [*import_path, *sys.path]),
                         name="capbridge-landlock-paths", daemon=True).start()
        self._sock = host
        self._reader = threading.Thread(target=self._read_loop, name="capbridge-forkserver", daemon=True)
        self._reader.start()
        _instances.add(self)

    # -- state --------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        """Usable from this process: running, not closed, not inherited by a fork."""
        return not self._gone and self.owner == os.getpid()

    @property
    def pid_namespace(self) -> bool:
        """Whether each sandbox is pid 1 of its own PID namespace (after ``ready``)."""
        return bool(self.flags & wire.FLAG_PIDNS)

    def ready(self, timeout: float | None = SPAWN_TIMEOUT) -> bool:
        """Wait until the server has finished its imports and said HELLO."""
        return self._hello.wait(timeout) and not self._gone

    def stats(self) -> dict:
        with self._lock:
            return {
                "server_pid": self.server_pid,
                "alive": self.alive,
                "pid_namespace": self.pid_namespace,
                "spawned": self.spawned,
                "live": len(self._live),
                "pending": len(self._pending),
            }

    # -- spawning -----------------------------------------------------------------

    def spawn(self, config: SandboxConfig) -> SandboxProcess:
        """Start one sandbox for ``config`` (raises ``SandboxError`` if it cannot)."""
        blob = pickle.dumps(config, protocol=5)
        if len(blob) + 9 > wire.MAX_PACKET:
            from capbridge._errors import SandboxError

            raise SandboxError(f"the sandbox config pickles to {len(blob)} bytes; at most "
                               f"{wire.MAX_PACKET - 9} fit in a spawn request")
        to_child, to_host = os.pipe2(os.O_CLOEXEC), os.pipe2(os.O_CLOEXEC)
        out, err = os.pipe2(os.O_CLOEXEC), os.pipe2(os.O_CLOEXEC)
        for pipe in (to_child, to_host):
            try:
                fcntl.fcntl(pipe[1], fcntl.F_SETPIPE_SZ, CHANNEL_PIPE_SIZE)
            except OSError:
                pass  # above /proc/sys/fs/pipe-max-size for an unprivileged host
        proc = SandboxProcess(to_host[0], to_child[1], out[0], err[0])
        try:
            self._request(blob, (to_child[0], to_host[1], out[1], err[1]), proc)
        except BaseException:
            proc.close_fds()
            raise
        finally:
            for fd in (to_child[0], to_host[1], out[1], err[1]):
                os.close(fd)
        return proc

    def _request(self, blob: bytes, fds: tuple[int, ...], proc: SandboxProcess) -> None:
        from capbridge._errors import SandboxError

        req_id = next(self._ids)
        pending = _Pending(proc)
        with self._lock:
            if not self.alive:
                raise _ServerGone()
            self._pending[req_id] = pending
        try:
            self._sock.sendmsg(
                [wire.encode_spawn(req_id, blob)],
                [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, array.array("i", fds))],
            )
        except OSError as exc:
            with self._lock:
                self._pending.pop(req_id, None)
            raise _ServerGone() from exc
        if not pending.done.wait(SPAWN_TIMEOUT):
            with self._lock:
                self._pending.pop(req_id, None)  # a late READY is killed by the reader
            raise SandboxError(f"the fork server did not start a sandbox within {SPAWN_TIMEOUT:g}s")
        if pending.gone:
            raise _ServerGone()
        if pending.error:
            raise SandboxError(f"the fork server could not start a sandbox: {pending.error}")

    # -- the reader thread ----------------------------------------------------------

    def _read_loop(self) -> None:
        sock = self._sock
        anc_size = _socket.CMSG_SPACE(4)
        while True:
            try:
                msg, anc, _, _ = sock.recvmsg(4096, anc_size)
            except OSError:
                break
            if not msg:
                break
            fds = _received_fds(anc)
            try:
                self._dispatch(msg, fds)
            except Exception:  # malformed packet from our own server: drop it
                for fd in fds:
                    _close(fd)
        self._lost()

    def _dispatch(self, msg: bytes, fds: list[int]) -> None:
        kind = msg[:1]
        if kind == wire.READY and len(fds) == 1:
            req_id, pid = wire.decode_ready(msg)
            with self._lock:
                pending = self._pending.pop(req_id, None)
                if pending is not None:
                    pending.proc._started(pid, fds[0])
                    self._live[pid] = pending.proc
                    self.spawned += 1
            if pending is None:  # the requester gave up waiting
                _kill_pidfd(fds[0])
                _close(fds[0])
                return
            pending.done.set()
            return
        for fd in fds:
            _close(fd)
        if kind == wire.EXIT:
            pid, status, cpu_us = wire.decode_exit(msg)
            with self._lock:
                proc = self._live.pop(pid, None)
            if proc is not None:
                proc._set_ended(ExitStatus.from_wait_status(status, cpu_us / 1e6))
        elif kind == wire.FAILED:
            req_id, reason = wire.decode_failed(msg)
            with self._lock:
                pending = self._pending.pop(req_id, None)
            if pending is not None:
                pending.error = reason or "unknown failure"
                pending.done.set()
        elif kind == wire.HELLO:
            self.server_pid, self.flags = wire.decode_hello(msg)
            self._hello.set()

    def _lost(self) -> None:
        """The server is gone: fail what waits on it, and end what it started."""
        with self._lock:
            self._gone = True
            pending, self._pending = list(self._pending.values()), {}
            live, self._live = list(self._live.values()), {}
        self._hello.set()
        for p in pending:
            p.gone = True
            p.done.set()
        for proc in live:
            # The server's children die with it (PR_SET_PDEATHSIG); their real
            # status went with the server, so report the SIGKILL they received.
            with proc._lock:
                pidfd = proc._pidfd
                if pidfd >= 0:
                    _kill_pidfd(pidfd)
                    _wait_readable(pidfd, 2.0)
            proc._set_ended(ExitStatus(signal=signal.SIGKILL))
        try:
            self._popen.wait(5)
        except subprocess.TimeoutExpired:  # pragma: no cover
            self._popen.kill()
            self._popen.wait()
        _close_socket(self._sock)

    # -- stopping -----------------------------------------------------------------

    def close(self) -> None:
        """Stop the server (it kills the sandboxes it started) and reap it."""
        if self.owner != os.getpid():
            self.abandon()
            return
        with self._lock:
            self._gone = True
        try:
            self._sock.shutdown(_socket.SHUT_RDWR)
        except OSError:
            pass
        if threading.current_thread() is not self._reader:
            self._reader.join(10)

    def abandon(self) -> None:
        """Drop an inherited server in a forked child, touching nothing shared."""
        self._gone = True
        self.owner = -1
        _close_socket(self._sock)


# -- the per-process default server ---------------------------------------------------

_default: ForkServer | None = None
_default_lock = threading.Lock()
_started = 0


def _server() -> ForkServer:
    global _default, _started
    with _default_lock:
        server = _default
        if server is None or not server.alive:
            if server is not None:
                server.close()
            server = _default = ForkServer()
            _started += 1
        return server


def ensure_server() -> None:
    """Start this process's fork server if none runs (without waiting for it)."""
    server = _default
    if server is None or not server.alive:
        _server()


def spawn(config: SandboxConfig) -> SandboxProcess:
    """Start one sandbox process for ``config``; it locks itself down before serving."""
    from capbridge._errors import SandboxError

    for attempt in range(2):
        try:
            return _server().spawn(config)
        except _ServerGone as exc:
            if attempt:
                raise SandboxError("the fork server died while starting a sandbox") from exc
    raise AssertionError("unreachable")  # pragma: no cover


def prestart(timeout: float = SPAWN_TIMEOUT) -> None:
    """Start this process's fork server now, so the first :func:`spawn` is fast."""
    from capbridge._errors import SandboxError

    if not _server().ready(timeout):
        raise SandboxError("the fork server did not start")


def stats() -> dict:
    """The default fork server's numbers, and how many were started."""
    with _default_lock:
        server = _default
    out = server.stats() if server is not None else {"alive": False}
    out["servers_started"] = _started
    return out


def _after_fork_in_child() -> None:
    global _default, _default_lock
    for server in list(_instances):
        server.abandon()
    _default = None
    _default_lock = threading.Lock()


def _stop_all() -> None:
    for server in list(_instances):
        server.close()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_stop_all)


# -- helpers --------------------------------------------------------------------------

def _send_base_paths(fd: int, path: list[str]) -> None:
    """Write the base Landlock paths, one per line and an empty line last, then close."""
    try:
        from . import _landlock

        data = "".join(p + "\n" for p in _landlock.base_paths(path)) + "\n"
        view = memoryview(data.encode("utf-8", "surrogateescape"))
        while view:
            view = view[os.write(fd, view):]
    except Exception:
        pass  # the server works them out itself
    finally:
        _close(fd)


def _received_fds(anc: list) -> list[int]:
    fds = array.array("i")
    for level, kind, data in anc:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return list(fds)


def _kill_pidfd(pidfd: int) -> None:
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except OSError:
        pass


def _wait_readable(fd: int, timeout: float) -> None:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    poller.poll(int(timeout * 1000))


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _close_socket(sock: _socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass
