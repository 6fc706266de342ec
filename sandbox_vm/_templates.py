"""Preload templates: clean processes that import modules once and fork sandboxes from there.

A config with ``preload`` is served by a *template*: a process the fork server forks
(before any sandbox of that config exists, in the server's PID namespace) that sets the
sandbox environment, imports the ``preload`` modules and then serves spawn requests
exactly as the server does (same code, :class:`sandbox_vm._forkserver._Server`). Every
sandbox of that config is forked from it and locks itself down as usual, so it starts
with those modules imported and their pages shared copy-on-write.

* Only the fork server talks to a template, over a ``SOCK_SEQPACKET`` pair, with the
  wire format of :mod:`sandbox_vm._forkserver`; it relays READY (with the pidfd), FAILED
  and EXIT to the host unchanged. Untrusted code never runs in a template: it only
  imports the host's modules and forks.
* Templates are keyed by what shapes them: confinement, the allowed packages (the
  prepared Landlock ruleset it holds), ``preload`` and ``env``. At most
  :data:`MAX_TEMPLATES` live; the least recently used idle one is stopped for a new one.
* A sandbox changes only its own copy of a preloaded module. Memory a package maps
  *shared* would be seen by every sandbox of the template, so a template whose imports
  leave a shared anonymous or writable mapping refuses to serve. The legacy global
  ``numpy.random`` state is reseeded in each sandbox (Python's ``random`` reseeds
  itself after ``fork``).
* A template that fails to import (or dies) fails the requests waiting for it with its
  exception, or its exit status and last output; the next request starts a new one.
  Its sandboxes die with it (parent-death signal) and are reaped by the server, which
  is a child subreaper.
"""

from __future__ import annotations

import os
import struct
import sys
import time
TYPE_CHECKING = False
if TYPE_CHECKING:  # (typing is not imported at run time: it costs start-up)
    from typing import Any, NoReturn

    from ._forkserver import _Server

from . import _forkserver as wire

__all__ = ["MAX_TEMPLATES", "Templates", "shared_mappings", "template_key"]

MAX_TEMPLATES = 8
OUTPUT_TAIL = 4096  # bytes of a template's start-up output kept for error messages
# Global random state seeded at import that a fork would otherwise copy into every sandbox.
_RESEED = (("numpy.random", "seed"),)


def template_key(config: Any) -> tuple:
    """Configs with equal keys are forked from the same template."""
    return (*wire.prepared_key(config), tuple(config.preload), tuple(config.env))


class _Template:
    """The server's record of one template process."""

    def __init__(self, key: tuple, preload: tuple[str, ...], pid: int, sock: Any, out_fd: int) -> None:
        self.key, self.preload, self.pid = key, preload, pid
        self.sock: Any = sock
        self.out_fd = out_fd
        self.ready = False
        self.failure = ""
        self.output = bytearray()
        self.queue: list[tuple[int, bytes, list[int]]] = []  # requests waiting for it to be ready
        self.pending: set[int] = set()  # request ids it has not answered
        self.sandboxes: dict[int, int] = {}  # pid -> our pidfd, adopted if the template dies
        self.last_used = time.monotonic()


class Templates:
    """The fork server's templates: starting them, routing requests, relaying replies."""

    def __init__(self, server: _Server) -> None:
        self.server = server
        self._by_key: dict[tuple, _Template] = {}
        self._by_fd: dict[int, _Template] = {}
        self._by_pid: dict[int, _Template] = {}

    def owns(self, fd: int) -> bool:
        return fd in self._by_fd

    def submit(self, config: Any, req_id: int, packet: bytes, fds: list[int]) -> None:
        """Serve spawn ``packet`` from the template for ``config`` (``fds`` stay the caller's)."""
        key = template_key(config)
        t = self._by_key.get(key)
        if t is None or t.sock is None:  # none yet, or it is ending (reaped later)
            t = self._start(key, config)
        t.last_used = time.monotonic()
        if t.ready:
            self._forward(t, req_id, packet, fds)
        else:
            t.queue.append((req_id, packet, [os.dup(fd) for fd in fds]))

    def forget(self) -> None:
        """In a fresh fork: let go of the templates' sockets without closing them
        (the descriptors are closed with every other one, never by a finalizer)."""
        for t in self._by_pid.values():
            if t.sock is not None:
                t.sock.detach()
                t.sock = None
        self._by_key.clear()
        self._by_fd.clear()
        self._by_pid.clear()

    def on_event(self, fd: int) -> None:
        t = self._by_fd[fd]
        if fd == t.out_fd:
            self._read_output(t)
        else:
            self._read(t)

    def ended(self, pid: int, status: int) -> bool:
        """Handle a reaped child if it was a template; ``False`` if it was not one."""
        t = self._by_pid.pop(pid, None)
        if t is None:
            return False
        self._read(t)  # what it said before it died
        while t.out_fd >= 0:
            self._read_output(t)
        if self._by_key.get(t.key) is t:
            del self._by_key[t.key]
        reason = self._death_reason(t, status)
        for req_id, _, fds in t.queue:
            self.server.fail(req_id, reason)
            for fd in fds:
                os.close(fd)
        for req_id in sorted(t.pending):
            self.server.fail(req_id, reason)
        for sandbox_pid, pidfd in t.sandboxes.items():
            self.server.adopt(sandbox_pid, pidfd)  # reparented to the server (a subreaper)
        return True

    # -- internals -----------------------------------------------------------------

    def _start(self, key: tuple, config: Any) -> _Template:
        srv = self.server
        self._evict()
        keep = srv.prepare(config)
        s = srv._socket
        mine, theirs = s.socketpair(s.AF_UNIX, s.SOCK_SEQPACKET)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        try:
            pid = os.fork()
        except BaseException:
            for sock in (mine, theirs):
                sock.close()
            os.close(out_r)
            os.close(out_w)
            raise
        if pid == 0:
            mine.detach()  # closed below with every other descriptor of the server
            become_template(srv, config, theirs, out_w, keep)
        theirs.close()
        os.close(out_w)
        os.set_blocking(out_r, False)
        srv.adopt(pid, os.pidfd_open(pid))
        t = _Template(key, tuple(config.preload), pid, mine, out_r)
        for fd in (mine.fileno(), out_r):
            self._by_fd[fd] = t
            srv.poller.register(fd, srv.POLLIN)
        self._by_key[key] = t
        self._by_pid[pid] = t
        return t

    def _evict(self) -> None:
        """Stop the least recently used idle template when there are too many."""
        import signal

        if len(self._by_key) < MAX_TEMPLATES:
            return
        idle = [t for t in self._by_key.values() if t.ready and not (t.sandboxes or t.pending or t.queue)]
        if not idle:
            return
        oldest = min(idle, key=lambda t: t.last_used)
        del self._by_key[oldest.key]
        pidfd = self.server.children.get(oldest.pid)
        if pidfd is not None:
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            except OSError:
                pass

    def _forward(self, t: _Template, req_id: int, packet: bytes, fds: list[int]) -> None:
        s = self.server._socket
        try:
            t.sock.sendmsg([packet], [(s.SOL_SOCKET, s.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))])
        except (OSError, AttributeError) as exc:
            self.server.fail(req_id, f"the template that preloads {', '.join(t.preload)} is gone ({exc})")
            return
        t.pending.add(req_id)

    def _read(self, t: _Template) -> None:
        s = self.server._socket
        while t.sock is not None:
            try:
                msg, anc, _, _ = t.sock.recvmsg(wire.MAX_PACKET, s.CMSG_SPACE(4), s.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                msg, anc = b"", []
            fds = [fd for level, kind, data in anc if level == s.SOL_SOCKET and kind == s.SCM_RIGHTS
                   for fd in struct.unpack(f"{len(data) // 4}i", data[: len(data) - len(data) % 4])]
            if not msg:
                for fd in fds:
                    os.close(fd)
                self._forget_fd(t.sock.fileno())
                t.sock.close()
                t.sock = None
                return
            self._message(t, msg, fds)

    def _message(self, t: _Template, msg: bytes, fds: list[int]) -> None:
        srv = self.server
        kind = msg[:1]
        if kind == wire.READY and len(fds) == 1:
            req_id, pid = wire.decode_ready(msg)
            t.pending.discard(req_id)
            t.sandboxes[pid] = fds[0]
            srv.send(msg, (fds[0],))
            return
        for fd in fds:
            os.close(fd)
        if kind == wire.HELLO:
            t.ready = True
            queue, t.queue = t.queue, []
            for req_id, packet, qfds in queue:
                self._forward(t, req_id, packet, qfds)
                for fd in qfds:
                    os.close(fd)
        elif kind == wire.FAILED:
            req_id, reason = wire.decode_failed(msg)
            if req_id == 0:  # the template's own start-up failed
                t.failure = reason
            else:
                t.pending.discard(req_id)
                srv.send(msg)
        elif kind == wire.EXIT:
            pid, _, _ = wire.decode_exit(msg)
            pidfd = t.sandboxes.pop(pid, None)
            if pidfd is not None:
                os.close(pidfd)
            srv.send(msg)

    def _read_output(self, t: _Template) -> None:
        try:
            data = os.read(t.out_fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            t.output += data
            del t.output[:-OUTPUT_TAIL]
            return
        self._forget_fd(t.out_fd)
        os.close(t.out_fd)
        t.out_fd = -1

    def _forget_fd(self, fd: int) -> None:
        self._by_fd.pop(fd, None)
        try:
            self.server.poller.unregister(fd)
        except KeyError:  # pragma: no cover
            pass

    @staticmethod
    def _death_reason(t: _Template, status: int) -> str:
        names = ", ".join(t.preload)
        if t.failure:
            text = f"could not preload {names}: {t.failure}"
        elif not t.ready:
            text = f"could not preload {names}: the template process {_status_text(status)} while importing"
        else:
            text = (f"the template process that preloads {names} {_status_text(status)}; "
                    "the next sandbox of this configuration starts a new one")
        output = t.output.decode("utf-8", "replace").strip()
        if output and output not in text:
            text += f"; its output ends: {output[-1500:]}"
        return text


def _status_text(status: int) -> str:
    import signal

    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            return f"was killed by {signal.Signals(sig).name}"
        except ValueError:
            return f"was killed by signal {sig}"
    return f"exited with code {os.waitstatus_to_exitcode(status)}"


# -- inside a template process --------------------------------------------------------

def become_template(srv: _Server, config: Any, sock: Any, out_w: int, keep: tuple[int, ...]) -> NoReturn:
    """Turn this fresh fork of the server into the template for ``config``; never returns."""
    import select
    import signal
    import traceback

    code = 70
    ctl = -1
    try:
        srv.ctl.detach()  # the host's socket: never touched here, closed below
        ctl = srv._move_high(sock.detach())
        srv.ctl = srv._socket.socket(fileno=ctl)
        srv.libc.prctl(wire._PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != srv.pid:
            os._exit(code)  # the server died while we were being born
        if srv.templates is not None:
            srv.templates.forget()
        landlock = sys.modules.get("sandbox_vm._landlock")
        if landlock is not None:  # other configs' rulesets are not ours to hold
            landlock.discard_cache(keep=landlock.cached(tuple(config.allow_imports)) if keep else None)
        os.dup2(srv.devnull, 0)
        os.dup2(out_w, 1)
        os.dup2(out_w, 2)
        held = {1, 2, *wire._RESERVED_LOW_FDS, ctl, srv.devnull, *keep}
        if srv.own_pidns >= 0:
            held.add(srv.own_pidns)
        wire._close_all_but(3, tuple(held))
        srv.pid = os.getpid()
        srv.children.clear()
        srv.by_pidfd.clear()
        srv.standby = None  # the server's, whose socket was closed above
        srv.unclaimed.clear()
        srv.templates = None
        srv.prepared = {wire.prepared_key(config): keep}
        srv.poller = select.poll()
        srv.poller.register(ctl, srv.POLLIN)
        for name in wire._WARM:  # what the server had not imported yet when it forked us
            wire._import_optional(name)
        preload(config)
        lockdown = sys.modules.get("sandbox_vm._lockdown")
        if srv.own_pidns >= 0 and hasattr(lockdown, "compile_seccomp"):
            lockdown.compile_seccomp(1)  # if the server had not yet, when it forked us
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os.dup2(srv.devnull, 1)  # start-up output is over: the server sees end of file
        os.dup2(srv.devnull, 2)
        srv.hello()
        srv.run(warm_up=False)
        code = 0
    except BaseException as exc:
        if ctl >= 0:
            try:
                srv.fail(0, _exception_text(exc))
            except OSError:
                pass
        try:
            traceback.print_exc()
            sys.stderr.flush()
        except BaseException:
            pass
    os._exit(code)


class PreloadRefused(Exception):
    """Importing the preload modules left state every sandbox of the template would share."""


def preload(config: Any) -> None:
    """Set the sandbox environment, import ``config.preload``, check and freeze the result."""
    import gc
    import importlib

    os.environ.update(config.environment())
    for name in config.preload:
        importlib.import_module(name)
    shared = shared_mappings()
    if shared:
        raise PreloadRefused(
            f"importing {', '.join(config.preload)} mapped memory shared between processes ({shared[0]}); "
            "every sandbox forked from the template would share it, so these modules cannot be preloaded "
            "(allow them with allow_imports and import them in each sandbox instead)"
        )
    for module, function in _RESEED:
        if module in sys.modules:
            os.register_at_fork(after_in_child=getattr(sys.modules[module], function))
    gc.collect()
    gc.freeze()


def shared_mappings(maps: str = "/proc/self/maps") -> list[str]:
    """Mappings of this process a forked child would share *writably* with its siblings.

    Every writable shared mapping, and every shared mapping of anonymous memory (which
    ``mprotect`` could make writable). Read-only shared mappings of files (glibc's
    ``gconv-modules.cache``) are not listed.
    """
    found = []
    with open(maps) as f:
        for line in f:
            fields = line.split(maxsplit=5)
            if len(fields) < 5 or fields[1][3:4] != "s":
                continue
            name = fields[5].strip() if len(fields) == 6 else ""
            anonymous = (not name.startswith("/") or name.startswith(("/dev/zero", "/dev/shm/", "/memfd:", "/SYSV"))
                         or name.endswith("(deleted)"))
            if "w" in fields[1] or anonymous:
                found.append(f"{fields[0]} {fields[1]} {name or '[anonymous]'}")
    return found


def _exception_text(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
