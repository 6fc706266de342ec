"""The clean fork server: a fresh interpreter that forks one sandbox per request.

The host starts it with :func:`server_command` (``python -I -S``, empty environment,
cwd ``/``, only the control socket inherited) and talks to it over an ``AF_UNIX``
``SOCK_SEQPACKET`` socket, one message per packet, descriptors by ``SCM_RIGHTS``.

Wire format (integers big-endian; the first byte names the message)::

    host -> server
      S  req_id:u64  pickle(SandboxConfig)      fds: chan_r, chan_w, out_w, err_w
    server -> host
      H  server_pid:u32  flags:u32              once, when ready (FLAG_PIDNS)
      R  req_id:u64  pid:i32                    fds: pidfd of the new sandbox
      F  req_id:u64  utf-8 reason               the request could not be served
      X  pid:i32  wait_status:i32               a sandbox ended and was reaped

Only the host ever pickles (the config); everything the server sends is fixed-size
integers or text. The server stays single-threaded and keeps no host data.

Each child: a new session, ``/dev/null`` on 0, stdout/stderr pipes on 1/2, the
channel on 3 (read) and 4 (write), every other descriptor closed except those
:mod:`sandbox_vm._landlock` prepared (see ``_Server.prepare``); then
:func:`sandbox_vm._child.child_main`.
Where the kernel allows it, each child is pid 1 of its own PID namespace: the server
``unshare(CLONE_NEWPID)`` before the fork and ``setns`` back to its own namespace
after it, so the child stays the server's direct child (reaped and ``pidfd_open``-ed
there) and no middle process is needed.

While idle the server forks one *standby* child ahead of the next request: a fork
that has run everything a child does before it needs its config (the fork itself,
the new session, closing the server's descriptors) and waits on a socket pair of its
own. Unless the last request was for ``confinement="none"``, it also unshares the
namespaces its lockdown would (:func:`sandbox_vm._namespaces.unshare_ahead`; that step
then reports them), so only ``strict`` and ``best-effort`` requests go to such a
standby; without PID namespaces it also compiles its seccomp filter, which names its
pid (with them every sandbox is pid 1 and the server compiled it once). A spawn
request whose Landlock ruleset was prepared before the standby forked (or that has
none prepared) is handed to it (the packet and its descriptors, unchanged) and the
standby goes on exactly as a child forked for the request would; any other request
is forked as before. The standby holds no host data until that packet arrives, and
waits not dumpable, like the server.

A config with ``preload`` is served by a template (:mod:`sandbox_vm._templates`): a
child of the server, running this same server code, that imported those modules and
forks the sandboxes; the server forwards it the spawn request and relays its R, F and
X packets to the host unchanged, so the host sees no difference. The server is a child
subreaper: if a template dies, its sandboxes are reparented to the server and reaped
there.
"""

from __future__ import annotations

import os
import struct
import sys
TYPE_CHECKING = False
if TYPE_CHECKING:  # (typing is not imported at run time: it costs start-up)
    from collections.abc import Iterable

__all__ = [
    "FLAG_PIDNS",
    "MAX_PACKET",
    "SPAWN_FDS",
    "decode_exit",
    "decode_failed",
    "decode_hello",
    "decode_ready",
    "encode_spawn",
    "server_command",
    "server_paths",
]

# -- wire format: shared by the host (sandbox_vm._spawn) and the server below --------

SPAWN = b"S"
HELLO = b"H"
READY = b"R"
FAILED = b"F"
EXIT = b"X"

FLAG_PIDNS = 1  # each sandbox gets its own PID namespace
SPAWN_FDS = 4  # chan_r, chan_w, out_w, err_w
MAX_PACKET = 1 << 16  # a pickled SandboxConfig is a few hundred bytes

_U64 = struct.Struct(">Q")
_HELLO = struct.Struct(">II")
_READY = struct.Struct(">Qi")
_EXIT = struct.Struct(">iiQ")


def encode_spawn(req_id: int, config_pickle: bytes) -> bytes:
    return SPAWN + _U64.pack(req_id) + config_pickle


def decode_hello(msg: bytes) -> tuple[int, int]:
    """``(server_pid, flags)``"""
    return _HELLO.unpack(msg[1:])


def decode_ready(msg: bytes) -> tuple[int, int]:
    """``(req_id, pid)``"""
    return _READY.unpack(msg[1:])


def decode_failed(msg: bytes) -> tuple[int, str]:
    """``(req_id, reason)``"""
    return _U64.unpack_from(msg, 1)[0], msg[1 + _U64.size:].decode("utf-8", "replace")


def decode_exit(msg: bytes) -> tuple[int, int, int]:
    """``(pid, wait_status, cpu_microseconds)``"""
    return _EXIT.unpack(msg[1:])


# -- how the host starts the server ---------------------------------------------------

_BOOT = (
    "import sys;sys.path[:0]=sys.argv[3:];"
    "from sandbox_vm._forkserver import _server_main;"
    "_server_main(int(sys.argv[1]),sys.argv[2])"
)

# The variables the sandbox needs, and nothing else. MALLOC_ARENA_MAX keeps glibc
# from reserving a 64 MiB arena per thread under RLIMIT_AS.
SERVER_ENV = {"MALLOC_ARENA_MAX": "2", "LC_ALL": "C.UTF-8"}


_REQUIRED = ("sandbox_vm", "capbridge", "cloudpickle", "tblib")


def server_paths(extra: Iterable[str] = ()) -> list[str]:
    """The directories a fork server imports from besides the standard library:
    capbridge's own, its dependencies', this environment's ``site-packages``."""
    import importlib.util
    import sysconfig

    paths: list[str] = []
    for name in _REQUIRED:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            paths.append(os.path.dirname(os.path.abspath(list(spec.submodule_search_locations)[0])))
    site = sysconfig.get_paths()
    paths += [site["purelib"], site["platlib"], *extra]
    return list(dict.fromkeys(p for p in paths if p and os.path.isdir(p)))


def server_command(ctl_fd: int, paths: list[str], options: str) -> list[str]:
    """The argv that starts a fork server on ``ctl_fd`` importing from ``paths``.

    ``-I`` ignores ``PYTHON*`` variables and the user site, ``-S`` skips ``site``
    (and every ``.pth`` file): the import path is exactly the stdlib plus ``paths``.
    ``options`` is ``,``-separated: ``nopidns``, ``entry=module:function``,
    ``base=FD`` (a pipe the base Landlock paths arrive on).
    """
    return [sys.executable, "-I", "-S", "-X", "utf8", "-c", _BOOT, str(ctl_fd), options, *paths]


# -- the server process ---------------------------------------------------------------

# Imported before the first fork: what every sandbox runs.
_ESSENTIAL = (
    "sandbox_vm._config",
    "sandbox_vm._lockdown",
    "sandbox_vm._child",
    "sandbox_vm._runtime",
    "sandbox_vm._landlock",
    "pickle",
    "capbridge",
    "capbridge._sandbox_session",
    "capbridge._channel",
    "capbridge._errors_data",  # _runtime.serve, before HELLO (with linecache: exec and eval)
)
# Imported while the server is idle, then frozen: commonly used by sandbox code.
_WARM = (
    "json", "re", "collections", "datetime", "decimal", "fractions", "uuid", "math",
    "random", "functools", "itertools", "dataclasses", "typing", "traceback", "io",
    "struct", "base64", "hashlib", "copy", "string", "textwrap", "enum", "operator",
    "heapq", "bisect", "statistics", "contextlib", "abc", "numbers", "types",
    "inspect", "weakref", "array", "binascii", "zlib", "pprint",
    "ast",  # capbridge._presentation rebuilds the host's signatures with it
    "pickletools",  # capbridge._decoder names opcodes in its errors with it
    "cloudpickle",  # what Sandbox.call's pickles name
)

_RESERVED_LOW_FDS = range(3, 10)  # held in the server so children get 3 and 4 free
_CLONE_NEWPID = 0x20000000
_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_PR_SET_CHILD_SUBREAPER = 36
MAX_REASON = 3500  # bytes of a FAILED reason (the host reads 4 KiB packets)
# Seconds the server waits after a spawn before forking the next standby, so the
# sandbox just started has the CPUs to itself first: most of its start-up when
# requests are spaced out, a millisecond when they follow each other (the next
# request must find the standby ready).
STANDBY_DELAY = 0.004
STANDBY_DELAY_BUSY = 0.001
BUSY_GAP = 0.015  # requests closer than this follow each other


def prepared_key(config) -> tuple:
    """Configs with equal keys share a prepared Landlock ruleset."""
    return (config.confinement, tuple(sorted({n.partition(".")[0] for n in config.allow_imports})))


def _import_optional(name: str) -> None:
    try:
        __import__(name)
    except ImportError:
        pass


class _Server:
    """The server's state and loop (single-threaded; lives in the server process)."""

    def __init__(self, ctl_fd: int, options: str) -> None:
        import _socket
        import ctypes
        import select

        self._socket = _socket
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.ctypes = ctypes
        opts = dict(o.partition("=")[::2] for o in options.split(",") if o)
        self.entry = opts.get("entry", "sandbox_vm._child:child_main")
        # A pipe the host writes the base Landlock paths into (one per line) once it
        # has worked them out, while this server starts; -1 when it does not.
        self.base_fd = int(opts.get("base", "-1"))
        ctl_fd = self._move_high(ctl_fd)
        if self.base_fd >= 0:  # off the low numbers children need free
            self.base_fd = self._move_high(self.base_fd)
        self.devnull = self._move_high(os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC))
        for fd in _RESERVED_LOW_FDS:  # so no descriptor of ours sits on 3..9
            try:
                os.fstat(fd)
            except OSError:
                os.dup2(self.devnull, fd, inheritable=False)
        self.ctl = _socket.socket(fileno=ctl_fd)
        self.poller = select.poll()
        self.poller.register(ctl_fd, select.POLLIN)
        self.POLLIN = select.POLLIN
        self.children: dict[int, int] = {}  # pid -> pidfd (the server's own)
        self.by_pidfd: dict[int, int] = {}
        self.prepared: dict[tuple, tuple[int, ...]] = {}
        self.pid = os.getpid()
        self.standby: _Standby | None = None
        self.unclaimed: set[int] = set()  # standby pids never handed a request
        self.standby_due = self.last_spawn = 0.0
        self.standby_namespaces = True  # the next standby unshares them ahead
        # Preload templates (None inside a template, which forks sandboxes itself). The
        # server is a subreaper, so a dead template's sandboxes become its children.
        from ._templates import Templates

        self.templates: Templates | None = Templates(self)
        self.use_standby = True  # off in templates (they have no Templates) or if forking fails
        self.libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        self.own_pidns = -1
        if "nopidns" not in opts:
            self.own_pidns = self._probe_pidns()
        # Nothing in a sandbox may trace or read the server: not dumpable.
        self.libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)

    @staticmethod
    def _move_high(fd: int) -> int:
        import fcntl

        if fd >= 10:
            return fd
        new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(fd)
        return new

    def _probe_pidns(self) -> int:
        """Our own PID namespace fd if unshare+setns work here, else -1."""
        try:
            fd = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return -1
        fd = self._move_high(fd)
        if self.libc.unshare(_CLONE_NEWPID) != 0:
            os.close(fd)
            return -1
        if self.libc.setns(fd, _CLONE_NEWPID) != 0:  # pragma: no cover - would be odd
            os._exit(3)  # stuck with a half-made namespace: refuse to serve
        return fd

    # -- messages ------------------------------------------------------------------

    def send(self, msg: bytes, fds: tuple[int, ...] = ()) -> None:
        s = self._socket
        anc = [(s.SOL_SOCKET, s.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))] if fds else []
        self.ctl.sendmsg([msg], anc)

    def hello(self) -> None:
        flags = FLAG_PIDNS if self.own_pidns >= 0 else 0
        self.send(HELLO + _HELLO.pack(self.pid, flags))

    def handle_request(self) -> bool:
        """Serve one packet; ``False`` when the host has gone."""
        s = self._socket
        try:
            msg, anc, flags, _ = self.ctl.recvmsg(MAX_PACKET, s.CMSG_SPACE(4 * SPAWN_FDS))
        except InterruptedError:  # pragma: no cover
            return True
        except OSError:
            return False
        fds: list[int] = []
        for level, kind, data in anc:
            if level == s.SOL_SOCKET and kind == s.SCM_RIGHTS:
                fds.extend(struct.unpack(f"{len(data) // 4}i", data[: len(data) - len(data) % 4]))
        if not msg:
            for fd in fds:
                os.close(fd)
            return False
        req_id = _U64.unpack_from(msg, 1)[0] if len(msg) >= 9 else 0
        try:
            if msg[:1] != SPAWN or len(fds) != SPAWN_FDS or flags & (s.MSG_CTRUNC | s.MSG_TRUNC):
                self.send(FAILED + _U64.pack(req_id) + b"malformed spawn request")
                return True
            self.spawn(req_id, msg, fds)
        finally:
            for fd in fds:
                os.close(fd)
        return True

    def fail(self, req_id: int, reason: str) -> None:
        """Tell the host request ``req_id`` failed (the reason cut to fit its reader)."""
        data = reason.encode("utf-8", "replace")
        if len(data) > MAX_REASON:
            data = data[: MAX_REASON // 3] + b" [...] " + data[-(MAX_REASON * 2 // 3):]
        self.send(FAILED + _U64.pack(req_id) + data)

    def spawn(self, req_id: int, packet: bytes, fds: list[int]) -> None:
        """Start a sandbox for the spawn ``packet`` (``fds`` stay the caller's to close)."""
        import pickle
        import time

        try:
            config = pickle.loads(packet[9:])
            if config.preload and self.templates is not None:
                self.templates.submit(config, req_id, packet, fds)
                return
            keep = self.prepare(config)
            standby = self.claim_standby(prepared_key(config), config.confinement != "none")
            self.standby_namespaces = config.confinement != "none"
            if standby is None:
                pid = self.fork(config, fds, keep)
                pidfd = os.pidfd_open(pid)
                self.adopt(pid, pidfd)
        except Exception as exc:
            self.fail(req_id, f"{type(exc).__name__}: {exc}")
            return
        now = time.monotonic()
        busy = now - self.last_spawn < BUSY_GAP
        self.last_spawn = now
        self.standby_due = now + (STANDBY_DELAY_BUSY if busy else STANDBY_DELAY)
        if standby is None:
            self.send(READY + _READY.pack(req_id, pid), (pidfd,))
        else:
            self.hand_to_standby(standby, req_id, packet, fds)

    def adopt(self, pid: int, pidfd: int) -> None:
        """Reap ``pid`` when it ends (our child, or a template's orphan we inherited)."""
        self.children[pid] = pidfd
        self.by_pidfd[pidfd] = pid
        self.poller.register(pidfd, self.POLLIN)

    def prepare(self, config) -> tuple[int, ...]:
        """Descriptors prepared once here for children with this ``allow_imports``.

        ``sandbox_vm._landlock.prepare(allow_imports)`` builds a ruleset (and caches
        it in that module, which each child inherits); its fd stays open in the
        child for ``lock_down`` to enforce. Runs once per ``(confinement,
        allow_imports)``; a failure leaves the child's lockdown to build or refuse it.
        """
        key = prepared_key(config)
        if key not in self.prepared:
            fds: tuple[int, ...] = ()
            landlock = sys.modules.get("sandbox_vm._landlock")
            hook = getattr(landlock, "prepare", None)
            if hook is not None and config.confinement != "none":
                self.compile_seccomp()  # first: the host may still be sending the base paths
                try:
                    fds = (int(hook(tuple(config.allow_imports), self.base_paths()).fd),)
                except Exception:
                    fds = ()
            self.prepared[key] = fds
        return self.prepared[key]

    def base_paths(self) -> list[str] | None:
        """The base Landlock paths the host sent (None: work them out here)."""
        if self.base_fd < 0:
            return self._base
        fd, self.base_fd = self.base_fd, -1
        chunks = []
        try:
            while True:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
        except OSError:
            chunks = []
        finally:
            os.close(fd)
        data = b"".join(chunks).decode("utf-8", "surrogateescape")
        lines = data.split("\n")
        # Complete only when the host ended the list with an empty line.
        self._base = lines[:-2] if len(lines) >= 2 and lines[-2:] == ["", ""] else None
        return self._base

    _base: list[str] | None = None

    def prepare_default(self) -> None:
        """Prepare for the default config while idle (first strict spawn is warm).

        With PID namespaces every sandbox is pid 1, so its seccomp filter is compiled
        here once too.
        """
        from ._config import SandboxConfig

        self.prepare(SandboxConfig())
        self.compile_seccomp()

    _seccomp_compiled = False

    def compile_seccomp(self) -> None:
        """With PID namespaces every sandbox is pid 1: compile its seccomp filter once, here."""
        lockdown = sys.modules.get("sandbox_vm._lockdown")
        if self._seccomp_compiled or self.own_pidns < 0 or not hasattr(lockdown, "compile_seccomp"):
            return
        lockdown.compile_seccomp(1)
        self._seccomp_compiled = True

    # -- the standby child -----------------------------------------------------------

    def start_standby(self) -> None:
        """Fork the standby child (see the module docstring); idle time only."""
        s = self._socket
        ours, theirs = s.socketpair(s.AF_UNIX, s.SOCK_SEQPACKET)
        ours_fd, theirs_fd = ours.detach(), theirs.detach()  # >= 10: 3..9 are held
        keys = frozenset(self.prepared)
        namespaces = self.standby_namespaces
        try:
            pid = self._fork()
        except OSError:
            os.close(ours_fd)
            os.close(theirs_fd)
            self.use_standby = False  # forking fails: requests will say why
            return
        if pid == 0:
            os.close(ours_fd)
            self.wait_as_standby(theirs_fd, namespaces)  # never returns
        os.close(theirs_fd)
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:  # pragma: no cover - our own fresh child
            os.close(ours_fd)
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            self.use_standby = False
            return
        self.adopt(pid, pidfd)
        self.unclaimed.add(pid)
        self.standby = _Standby(pid, pidfd, ours_fd, keys, self.pid, namespaces)

    def claim_standby(self, key: tuple, confined: bool) -> _Standby | None:
        """The standby, taken, if it can serve a config with prepared ``key``: it
        inherited that key's descriptors (or the key has none), it unshared
        namespaces only if the config is ``confined`` (not ``none``), and it has not
        ended (killed while it waited, not yet reaped)."""
        sb = self.standby
        if sb is None or sb.owner != self.pid or (key not in sb.keys and self.prepared.get(key)):
            return None
        if sb.namespaces and not confined:  # of no use to the next "none" requests either
            self.retire_standby()
            return None
        self.standby = None
        if not _running(sb.pidfd):  # killed since it forked: fork afresh (reap ends it)
            os.close(sb.sock)
            return None
        self.unclaimed.discard(sb.pid)
        return sb

    def retire_standby(self) -> None:
        """End the standby unused (it is reaped as unclaimed); the next one follows."""
        sb, self.standby = self.standby, None
        if sb is not None:
            _kill_pidfd(sb.pidfd)
            os.close(sb.sock)

    def hand_to_standby(self, sb: _Standby, req_id: int, packet: bytes, fds: list[int]) -> None:
        """Answer READY with the standby's pid, then pass it the spawn packet.

        READY goes first: the standby runs as soon as the packet arrives and would
        otherwise compete with this process for the CPU before the host hears of
        it. If the standby died meanwhile the host sees it end, as any sandbox that
        dies while starting.
        """
        s = self._socket
        sock = s.socket(fileno=sb.sock)
        try:
            self.send(READY + _READY.pack(req_id, sb.pid), (sb.pidfd,))
            try:
                sock.sendmsg([packet], [(s.SOL_SOCKET, s.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))])
            except OSError:
                _kill_pidfd(sb.pidfd)
        finally:
            sock.close()

    def wait_as_standby(self, sock_fd: int, namespaces: bool) -> None:
        """In the standby child: be born, wait for one spawn packet, become that child."""
        import pickle

        code = 70
        try:
            self.born()
            held = {sock_fd, self.devnull, *(fd for fds in self.prepared.values() for fd in fds)}
            _close_all_but(10, tuple(held))
            ns = sys.modules.get("sandbox_vm._namespaces")
            if namespaces and hasattr(ns, "unshare_ahead"):
                ns.unshare_ahead(tuple(ns.KINDS))
            lockdown = sys.modules.get("sandbox_vm._lockdown")
            if namespaces and self.own_pidns < 0 and hasattr(lockdown, "compile_seccomp"):
                lockdown.compile_seccomp(os.getpid())  # its filter names its pid: known now
            s = self._socket
            sock = s.socket(fileno=sock_fd)
            msg, anc, flags, _ = sock.recvmsg(MAX_PACKET, s.CMSG_SPACE(4 * SPAWN_FDS))
            sock.close()
            fds = [fd for level, kind, data in anc if level == s.SOL_SOCKET and kind == s.SCM_RIGHTS
                   for fd in struct.unpack(f"{len(data) // 4}i", data[: len(data) - len(data) % 4])]
            if msg[:1] != SPAWN or len(fds) != SPAWN_FDS or flags & (s.MSG_CTRUNC | s.MSG_TRUNC):
                os._exit(0)  # the server went away (or the impossible happened)
            config = pickle.loads(msg[9:])
            self.run_child(config, fds, self.prepared.get(prepared_key(config), ()))
        except BaseException:
            pass
        os._exit(code)

    # -- forking a child --------------------------------------------------------------

    def fork(self, config, fds: list[int], keep: tuple[int, ...]) -> int:
        pid = self._fork()
        if pid == 0:
            self.become_child(config, fds, keep)  # never returns
        return pid

    def _fork(self) -> int:
        """``os.fork``, the child in a new PID namespace when the server has them."""
        if self.own_pidns >= 0 and self.libc.unshare(_CLONE_NEWPID) != 0:
            err = self.ctypes.get_errno()
            raise OSError(err, f"unshare(CLONE_NEWPID): {os.strerror(err)}")
        try:
            pid = os.fork()
        finally:
            if self.own_pidns >= 0 and os.getpid() == self.pid:
                if self.libc.setns(self.own_pidns, _CLONE_NEWPID) != 0:  # pragma: no cover
                    os._exit(3)
        return pid

    def become_child(self, config, fds: list[int], keep: tuple[int, ...]) -> None:
        code = 70
        try:
            self.born()
            self.run_child(config, fds, keep)
        except BaseException:
            pass
        os._exit(code)

    def born(self) -> None:
        """In a fresh fork: a session of its own, dying with the server, no server state."""
        import signal

        os.setsid()
        self.libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if self.own_pidns < 0 and os.getppid() != self.pid:
            os._exit(70)  # the server died while we were being born
        signal.signal(signal.SIGINT, signal.default_int_handler)
        self.ctl.detach()  # the fd is closed with the others, never by a finalizer
        if self.templates is not None:
            self.templates.forget()
        self.children.clear()
        self.by_pidfd.clear()
        self.standby = None
        self.unclaimed.clear()

    def run_child(self, config, fds: list[int], keep: tuple[int, ...]) -> None:
        """Set up descriptors and environment for ``config`` and run the entry."""
        self.libc.prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0)  # lockdown decides
        chan_r, chan_w, out_w, err_w = fds
        os.dup2(self.devnull, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        os.dup2(chan_r, 3)
        os.dup2(chan_w, 4)
        _close_all_but(5, keep)
        os.environ.update(config.environment())
        module, _, func = self.entry.partition(":")
        __import__(module)
        entry = getattr(sys.modules[module], func)
        entry(3, 4, config)
        os._exit(0)

    def reap(self, pidfd: int) -> None:
        pid = self.by_pidfd.pop(pidfd, None)
        if pid is None:
            return
        cpu_us = 0
        try:
            done, status, usage = os.wait4(pid, os.WNOHANG)
            if done:
                cpu_us = int((usage.ru_utime + usage.ru_stime) * 1e6)
        except ChildProcessError:  # pragma: no cover - cannot happen: only we reap
            done, status = pid, 0
        if done == 0:  # spurious wakeup: not ended yet
            self.by_pidfd[pidfd] = pid
            return
        self.poller.unregister(pidfd)
        os.close(pidfd)
        del self.children[pid]
        sb = self.standby
        if sb is not None and sb.pid == pid and sb.owner == self.pid:
            self.standby = None
            os.close(sb.sock)
        if pid in self.unclaimed:  # a standby that never served: the host never knew it
            self.unclaimed.discard(pid)
            return
        if self.templates is not None and self.templates.ended(pid, status):
            return
        self.send(EXIT + _EXIT.pack(pid, status, cpu_us))

    def kill_all(self) -> None:
        import signal

        for pid, pidfd in list(self.children.items()):
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            except OSError:
                pass
        for pid in list(self.children):
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:  # pragma: no cover
                pass

    def run(self, warm_up: bool = True) -> None:
        import gc
        import time

        warm: list = []
        if warm_up:
            warm = [self.prepare_default, *(lambda name=name: _import_optional(name) for name in _WARM)]
        while True:
            idle_work = warm or (self.use_standby and self.standby is None and self.templates is not None)
            timeout = None
            if idle_work:
                timeout = 0 if warm else max(0, int((self.standby_due - time.monotonic()) * 1000 + 0.999))
            try:
                events = self.poller.poll(timeout)
            except InterruptedError:  # pragma: no cover
                continue
            if not events and warm:
                warm.pop(0)()  # one small step, then look at the socket again
                if not warm:
                    gc.collect()
                    gc.freeze()
                continue
            if not events and idle_work:
                self.start_standby()
                continue
            for fd, _ in events:
                if fd == self.ctl.fileno():
                    try:
                        alive = self.handle_request()
                    except OSError:  # the host went away mid-reply
                        alive = False
                    if not alive:
                        self.kill_all()
                        return
                elif self.templates is not None and self.templates.owns(fd):
                    try:
                        self.templates.on_event(fd)
                    except OSError:  # relaying to the host failed: it went away
                        self.kill_all()
                        return
                else:
                    try:
                        self.reap(fd)
                    except OSError:
                        self.kill_all()
                        return


class _Standby:
    """The server's standby child: its pid and pidfd, our end of its socket pair, the
    prepared keys it inherited, the server process that forked it, and whether it
    unshared namespaces ahead."""

    __slots__ = ("pid", "pidfd", "sock", "keys", "owner", "namespaces")

    def __init__(self, pid: int, pidfd: int, sock: int, keys: frozenset, owner: int, namespaces: bool) -> None:
        self.pid, self.pidfd, self.sock, self.keys, self.owner = pid, pidfd, sock, keys, owner
        self.namespaces = namespaces


def _running(pidfd: int) -> bool:
    """Whether our child ``pidfd`` has not ended (it stays to be reaped)."""
    try:
        return os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
    except OSError:
        return False


def _kill_pidfd(pidfd: int) -> None:
    import signal

    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except OSError:
        pass


def _close_all_but(low: int, keep: tuple[int, ...]) -> None:
    """Close every descriptor ``>= low`` except ``keep``."""
    start = low
    for fd in sorted(k for k in set(keep) if k >= low):
        os.closerange(start, fd)
        start = fd + 1
    os.closerange(start, 1 << 20)


def _server_main(ctl_fd: int, options: str) -> None:
    """Entry point of the fork server process (see :func:`server_command`)."""
    import gc
    import signal

    # No collections while importing (they cost milliseconds before the first sandbox
    # and find next to nothing: what imports make stays); frozen below.
    gc.disable()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    server = _Server(ctl_fd, options)
    for name in _ESSENTIAL:
        _import_optional(name)
    entry_module = server.entry.partition(":")[0]
    _import_optional(entry_module)
    gc.freeze()  # a full collect waits for idle time (see _Server.run)
    gc.enable()
    try:
        server.hello()
    except OSError:
        return
    server.run()
