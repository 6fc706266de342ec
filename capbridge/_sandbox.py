"""The front door: :class:`Sandbox` and :class:`Limits`."""

from __future__ import annotations

import dataclasses
import os
import signal as _signal
import threading
import time
import warnings
from typing import Any, Callable, Iterable, Mapping

from . import _interrupt, _watchdog
from ._channel import Channel
from ._deadline import DEFAULT_GRACE, DeadlineBlock, Enforcer, Timed
from ._errors import (
    CapbridgeError,
    ConfinementUnavailable,
    CPULimitExceeded,
    MemoryLimitExceeded,
    ProtocolError,
    RemoteError,
    SandboxCrashed,
    SandboxError,
    SandboxTimeout,
)
from ._errors_data import error_from_data
from ._execution import Execution
from ._expose import registered_value_types
from ._output import OutputSink, pump
from ._protocol import PROTOCOL_VERSION, Op, Tag, check_message
from ._host_session import HostSession, ShippedCall
from ._audit import AuditEvent
from ._tracebacks import trim

__all__ = ["Sandbox", "Limits", "Execution"]

_OP_CALL = int(Op.CALL)
_HELLO_TIMEOUT = 30.0
_CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass(frozen=True)
class Limits:
    """Resource limits of one sandbox; ``None`` lifts a limit.

    :param memory_mb: memory (address space) of the whole sandbox process, in MiB.
    :param cpu_seconds: CPU time over the sandbox's whole life; when it is used up the
        sandbox is killed (:class:`CPULimitExceeded`).
    :param wall_seconds: wall-clock time of each outermost call from the host into the
        sandbox; when it runs out the sandbox is killed (:class:`SandboxTimeout`). A
        call's ``timeout=`` or an enclosing :meth:`Sandbox.deadline` replaces it.
    :param max_message_mb: the largest frame either side may send, in MiB.
    :param max_output_kb: bytes of stdout+stderr passed on to the host per call (for
        :meth:`Sandbox.execute`: of each stream per run), in KiB; the rest is
        discarded with a visible note.
    :param call_cpu_seconds: CPU time each outermost call may use; when it is spent
        the call is interrupted like a timeout (:class:`CallTimeout` if it stops
        within the grace period, else the sandbox is killed with
        :class:`CPULimitExceeded`).
    :param max_decoded_mb: host memory one message from the sandbox may decode into,
        in MiB. A message is also held to 14 times its own size (or 8 MiB, when that is
        more); past either, the sandbox is killed with :class:`ProtocolError` (an honest
        sandbox gets a :class:`CapabilityError` at its call site first).
    """

    memory_mb: int | None = 512
    cpu_seconds: float | None = 60
    wall_seconds: float | None = 30
    max_message_mb: float | None = 64
    max_output_kb: int | None = 1024
    call_cpu_seconds: float | None = None
    max_decoded_mb: float | None = 512

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0):
                raise ValueError(f"Limits.{field.name} must be a positive number or None, not {value!r}")

    @property
    def max_frame(self) -> int:
        mb = self.max_message_mb
        return (1 << 31) - 1 if mb is None else int(mb * 1024 * 1024)

    @property
    def max_decoded(self) -> int:
        mb = self.max_decoded_mb
        return 1 << 62 if mb is None else int(mb * 1024 * 1024)


_CONFINEMENTS = ("strict", "best-effort", "none")


def _cpu_set(cpus: Iterable[int] | str | None) -> set[int] | None:
    """The ``cpus`` argument of :class:`Sandbox` as a set (None: not given)."""
    if cpus is None:
        return None
    if cpus == "caller":
        return set(os.sched_getaffinity(0))
    if isinstance(cpus, (str, bytes, bytearray, memoryview)):
        raise ValueError(f'cpus must be a set of CPU numbers or "caller", not {cpus!r}')
    try:
        out = set(cpus)
    except TypeError:
        raise TypeError(f"cpus must be a set of CPU numbers, not {type(cpus).__name__}") from None
    if not out or not all(type(c) is int and c >= 0 for c in out):
        raise ValueError(f"cpus must be a non-empty set of CPU numbers (ints >= 0), not {cpus!r}")
    return out


class Sandbox:
    """One sandboxed Python process and the capabilities granted to it.

    Use it as a context manager or call :meth:`close`.

    :param grants: objects by name; they become globals of the code run inside.
    :param limits: the :class:`Limits` of this sandbox (default ``Limits()``).
    :param confinement: ``"strict"`` (refuse to start without rlimits, Landlock and
        seccomp), ``"best-effort"`` (use what the kernel offers, warn about the rest)
        or ``"none"`` (development only; warns loudly).
    :param allow_imports: top-level module names sandbox code may import beyond the
        standard library.
    :param preload: modules imported once in a clean template process before any
        untrusted code exists; sandboxes of the same configuration start with them
        imported.
    :param env: extra environment variables for the sandboxed process (it starts
        from an empty environment).
    :param stdout: where the sandbox's standard output goes: a callable taking
        ``str`` chunks, or a text file; by default the host's ``sys.stdout``, each
        line prefixed with the sandbox's pid.
    :param stderr: the same for standard error.
    :param debug: let host tracebacks of failing capabilities reach the sandbox, and
        keep capbridge's own frames in tracebacks on both sides (by default they show
        the user's frames only).
    :param audit: called with an :class:`AuditEvent` after each capability call.
    :param cpus: the CPUs the sandbox's process may run on (a set of CPU numbers, or
        ``"caller"``: those the creating thread may run on); by default the kernel
        places it. A sandbox that mostly answers one host thread's calls runs fastest
        on that thread's CPU: pin the thread (``os.sched_setaffinity(0, {cpu})``) and
        pass ``cpus="caller"``. A placement hint, not a limit: it confines nothing.

    ``interrupt_grace`` (seconds, default 0.5) is how long interrupted code gets to
    stop before the sandbox is killed; set it on the instance to change it.
    """

    interrupt_grace: float = DEFAULT_GRACE

    def __init__(
        self,
        grants: Mapping[str, Any] | None = None,
        *,
        limits: Limits | None = None,
        confinement: str = "strict",
        allow_imports: tuple[str, ...] | list[str] = (),
        preload: tuple[str, ...] | list[str] = (),
        env: Mapping[str, str] | None = None,
        stdout: Callable[[str], Any] | Any = None,
        stderr: Callable[[str], Any] | Any = None,
        debug: bool = False,
        audit: Callable[[AuditEvent], Any] | None = None,
        cpus: Iterable[int] | str | None = None,
        _awaiter: Callable[[Any], Any] | None = None,
    ) -> None:
        try:
            from sandbox_vm._spawn import ensure_server, spawn

            ensure_server()  # the first one of a process starts while the rest is checked
            # So do the threads every sandbox needs: starting one waits for it to run,
            # which is slow on a busy machine, and the fork server takes longer anyway.
            pump().start()
            _watchdog.start()
            from sandbox_vm import SandboxConfig
            from sandbox_vm._config import sandbox_options

            if confinement not in _CONFINEMENTS:
                raise ValueError(f"confinement must be one of {', '.join(map(repr, _CONFINEMENTS))}, not {confinement!r}")
            packages = sandbox_options(allow_imports=allow_imports, preload=preload, env=env)
            if grants is not None and not isinstance(grants, Mapping):
                raise TypeError("grants must be a mapping of names to objects")
            for name in grants or ():
                _check_grant_name(name)
            cpu_set = _cpu_set(cpus)
            self.limits = limits if limits is not None else Limits()
            if not isinstance(self.limits, Limits):
                raise TypeError("limits must be a capbridge.Limits")
            self.confinement = confinement
            self.debug = debug
            self._closed = False
            self._dead_reason: BaseException | None = None
            self._killed_by_us = False
            #: Called with a host thread id when a call of that thread is interrupted
            #: (None: every thread, the sandbox is ending); AsyncSandbox cancels what
            #: that thread waits for on its loop.
            self._on_interrupt: Callable[[int | None], None] | None = None
            self._stat_fd = -1
            self._lock = threading.Lock()
            self._last_usage = (0.0, 0.0)
            self.missing_layers: tuple[str, ...] = ()
            self.confinement_report: tuple = ()
            if confinement == "none":
                warnings.warn(
                    "capbridge: confinement='none' runs sandbox code WITHOUT any OS confinement; "
                    "it can read files, open sockets and start processes. Use it for development only.",
                    RuntimeWarning,
                    stacklevel=2,
                )
            elif confinement == "strict":
                _check_strict_available()
            config = SandboxConfig(
                confinement=confinement,
                memory_mb=self.limits.memory_mb,
                cpu_seconds=self.limits.cpu_seconds,
                max_message_bytes=self.limits.max_frame,
                max_decoded_bytes=self.limits.max_decoded,
                debug=debug,
                **packages,
            )
            self._proc = spawn(config)
            self.pid = self._proc.pid
            if cpu_set is not None:
                self._place(cpu_set)
            self._session = HostSession(max_frame=self.limits.max_frame, debug=debug,
                                        allow_modules=packages["allow_imports"], audit=audit, awaiter=_awaiter,
                                        max_decoded=self.limits.max_decoded)
            self._enforcer: Enforcer | None = None
            self._chan = chan = Channel(self._session, self._proc.rfd, self._proc.wfd,
                                        on_fatal=self._on_fatal, raise_error=self._remote_error,
                                        wall=self.limits.wall_seconds, on_deadline=self._on_deadline)
            self._enforcer = Enforcer(chan, interrupt=self._interrupt, kill=self._kill_for,
                                      cpu_now=self._cpu_now, grace=lambda: self.interrupt_grace,
                                      wall=self.limits.wall_seconds)
            if self.limits.call_cpu_seconds is not None:
                chan.cpu_budget = self.limits.call_cpu_seconds
                chan.cpu_clock = self._cpu_now
                chan.add_special(1)
            cap = None if self.limits.max_output_kb is None else int(self.limits.max_output_kb * 1024)
            self._sink = OutputSink(f"sandbox {self.pid}", stdout, stderr, cap, epoch=lambda: chan.calls_out)
            self._sink.add(self._proc.out_fd, 1)
            self._sink.add(self._proc.err_fd, 2)
            pump().register(self._sink)
            try:
                self._handshake()
                vts = tuple((vt.name, vt.fields, vt.is_tuple) for vt in registered_value_types())
                if vts:
                    self._boot("value_types", vts)
                if grants:
                    self._add_grants(grants)
            except BaseException:
                self.kill()
                raise
        except BaseException as exc:
            trim(exc, debug)
            raise

    # ------------------------------------------------------------------ start-up

    def _place(self, cpus: set[int]) -> None:
        """Keep the process on ``cpus`` (before its handshake: it has one thread, and
        every thread it starts later inherits the set)."""
        try:
            os.sched_setaffinity(self.pid, cpus)
        except BaseException as exc:
            self._proc.kill()  # whatever went wrong, the process is not left behind
            self._proc.wait(2.0)
            if not isinstance(exc, (OSError, OverflowError)):
                raise
            why = exc.strerror if isinstance(exc, OSError) else "no such CPU number"
            allowed = sorted(os.sched_getaffinity(0))
            raise ValueError(f"cpus={sorted(cpus)} cannot be used ({why}); "
                             f"this thread may run on CPUs {allowed}") from None

    def _handshake(self) -> None:
        try:
            body = self._chan.read_one(timeout=_HELLO_TIMEOUT)
        except BaseException as exc:
            self._proc.kill()
            status = self._proc.wait(2.0)
            what = ("did not get ready in time" if isinstance(exc, TimeoutError)
                    else "ended before it was ready")
            self._sink.drain()
            self._dead_reason = SandboxCrashed(
                f"the sandbox process {what} ({_describe_status(status)})" + self._sink.stderr_note(),
                *_status_fields(status),
            )
            raise self._dead_reason from exc
        try:
            msg = check_message(self._session.decode(body))
        except ProtocolError as exc:
            raise self._chan.fail(exc) from None
        if msg[0] != Tag.HELLO or msg[1] != PROTOCOL_VERSION:
            raise self._chan.fail(ProtocolError("the sandbox did not start with HELLO"))
        report = msg[2]
        if type(report) is tuple and report and report[0] == "failed" and len(report) == 4:
            _, step, err, hint = report
            self._proc.wait(2.0)
            raise ConfinementUnavailable(
                f"confinement={self.confinement!r} could not be set up: failed at step {step} "
                f"(errno {err}): {hint}"
            )
        if not (type(report) is tuple and len(report) == 3 and report[0] == "ok"):
            raise self._chan.fail(ProtocolError("malformed HELLO report"))
        layers = report[2] if type(report[2]) is tuple else ()
        self.confinement_report = layers
        self.missing_layers = tuple(
            str(l[0]) for l in layers if type(l) is tuple and len(l) == 3 and not l[1]
        )
        if self.confinement == "best-effort" and self.missing_layers:
            warnings.warn(
                "capbridge: best-effort confinement is missing: " + ", ".join(self.missing_layers),
                RuntimeWarning,
                stacklevel=3,
            )

    def _maybe_install_fs(self, grants: Mapping[str, Any]) -> None:
        fs = grants.get("fs")
        # A file system capability says so; the sandbox then routes open() and os
        # functions to it.
        if fs is not None and getattr(type(fs), "capbridge_file_system", False):
            self._boot("install_fs", "fs")

    # ------------------------------------------------------------------ public API

    def exec(self, source: str, *, filename: str = "<sandbox>", timeout: float | None = None) -> None:
        """Run ``source`` in the sandbox's ``__main__``; grants are its globals.

        :param source: Python statements.
        :param filename: the file name tracebacks show for this code.
        :param timeout: seconds this call may take, replacing ``Limits.wall_seconds``;
            then the code is interrupted, and the call raises :class:`CallTimeout`
            if it stops within the grace period (the sandbox lives on) or
            :class:`SandboxTimeout` after killing the sandbox if it does not.
        """
        try:
            if not isinstance(source, str):
                raise TypeError("source must be a str")
            self._boot("exec", source, filename, timeout=_check_timeout(timeout))
        except BaseException as exc:
            trim(exc, self.debug)
            raise

    def eval(self, expression: str, *, timeout: float | None = None) -> Any:
        """Evaluate ``expression`` in the sandbox; the result comes back by value or as a proxy.

        :param expression: one Python expression.
        :param timeout: seconds this call may take (see :meth:`exec`).
        """
        try:
            if not isinstance(expression, str):
                raise TypeError("expression must be a str")
            return self._boot("eval", expression, timeout=_check_timeout(timeout))
        except BaseException as exc:
            trim(exc, self.debug)
            raise

    def execute(self, source: str, *, timeout: float | None = None) -> Execution:
        """Run ``source`` like the interactive prompt and return an :class:`Execution`.

        Statements run in ``__main__``; if the last one is an expression, its value
        is ``Execution.value``. What the run printed is captured in the result
        instead of being streamed. A failure of the code - an exception, a syntax
        error, a timeout, a limit that killed the sandbox - is returned as
        ``Execution.error``, never raised.

        :param source: Python statements.
        :param timeout: seconds this run may take (see :meth:`exec`).
        """
        try:
            if not isinstance(source, str):
                raise TypeError("source must be a str")
            timeout = _check_timeout(timeout)
            self._check_usable()
        except BaseException as exc:
            trim(exc, self.debug)
            raise
        capture = self._sink.begin_capture()
        cpu0 = self._cpu_now()
        start = time.perf_counter()
        value = error = None
        try:
            value = self._chan.call(0, _OP_CALL, "execute", (source,), {}, timeout)
        except CapbridgeError as exc:
            trim(exc, self.debug)
            error = exc
        except BaseException as exc:
            trim(exc, self.debug)
            raise
        finally:
            duration = time.perf_counter() - start
            self._sink.end_capture()
        return Execution(value=value, stdout=capture.text(1), stderr=capture.text(2), error=error,
                         duration=duration, cpu_seconds=max(0.0, self._cpu_now() - cpu0),
                         alive=self.alive)

    def call(self, fn: Callable[..., Any], /, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """Ship ``fn`` by value (cloudpickle) and run ``fn(*args, **kwargs)`` in the sandbox.

        :param fn: a function (its closure and the globals it uses travel along).
        :param timeout: seconds this call may take (see :meth:`exec`). ``timeout`` is
            taken by ``call`` itself; to pass a keyword argument of that name to
            ``fn``, wrap it (``functools.partial`` or a lambda).
        """
        try:
            if not callable(fn):
                raise TypeError("Sandbox.call needs a callable")
            return self._boot("call", ShippedCall(fn, args, kwargs), timeout=_check_timeout(timeout))
        except BaseException as exc:
            trim(exc, self.debug)
            raise

    def load(self, source: str, name: str, *, timeout: float | None = None) -> Any:
        """Create module ``name`` from ``source`` in the sandbox; returns a proxy to it.

        :param source: the module's code; it sees the grants as globals.
        :param name: a dotted module name later code can import.
        :param timeout: seconds running the module's code may take (see :meth:`exec`).
        """
        try:
            if not isinstance(name, str) or not all(p.isidentifier() for p in name.split(".")):
                raise ValueError(f"module name must be a dotted identifier, not {name!r}")
            return self._boot("load", source, name, timeout=_check_timeout(timeout))
        except BaseException as exc:
            trim(exc, self.debug)
            raise

    def deadline(self, seconds: float) -> DeadlineBlock:
        """``with sb.deadline(seconds):`` - one deadline for every call this thread makes
        into the sandbox inside the block: proxy calls (``plugin.tick()``) as well as
        :meth:`exec`, :meth:`eval` and the others.

        The clock starts when the block is entered; a call still running when it
        runs out is interrupted exactly as with ``timeout=``. Blocks nest (the
        earlier deadline wins) and apply to the calling thread only.

        :param seconds: the time the whole block may take.
        """
        try:
            return DeadlineBlock(self._chan, _check_timeout(seconds, "seconds"))
        except BaseException as exc:
            trim(exc, self.debug)
            raise

    def grant(self, name: str, obj: Any) -> None:
        """Add a grant to the running sandbox (a global of later code).

        :param name: the global name the sandbox sees.
        :param obj: a capability, a function or a value.
        """
        try:
            _check_grant_name(name)
            self._add_grants({name: obj})
        except BaseException as exc:
            trim(exc, self.debug)
            raise

    def stats(self) -> dict[str, Any]:
        """Counters of this sandbox plus the sizes of its capability tables.

        ``cpu_seconds`` and ``peak_memory_mb`` are read from ``/proc`` while the
        process runs; once it has ended, ``cpu_seconds`` is its final CPU time.
        """
        cpu, peak = self._usage()
        status = self._proc.poll()
        if status is not None and status.cpu_seconds is not None:
            cpu = max(cpu, status.cpu_seconds)
        return {
            "calls_to_host": self._session.calls_in,
            "calls_to_sandbox": self._chan.calls_out,
            "bytes_to_host": self._session.bytes_in,
            "bytes_to_sandbox": self._session.bytes_out,
            "cpu_seconds": cpu,
            "peak_memory_mb": peak,
            "tables": self._session.stats(),
        }

    @property
    def alive(self) -> bool:
        """Whether the sandbox can still be used: not closed, not killed by a limit."""
        return not self._closed and self._chan.dead is None

    def close(self) -> None:
        """End the sandbox: deliver what it printed, then end the process.

        Returns at once; the process is reaped in the background. Idempotent;
        never raises.
        """
        try:
            self._shutdown()
        except BaseException:  # pragma: no cover - close never raises
            pass

    def kill(self) -> None:
        """End the sandbox at once (SIGKILL), like :meth:`close`."""
        self.close()

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if not self._closed:
                self._shutdown()
        except Exception:
            pass

    def __repr__(self) -> str:
        state = "closed" if self._closed else "dead" if self._chan.dead is not None else "running"
        return f"<Sandbox pid={self.pid} {self.confinement} {state}>"

    # ------------------------------------------------------------------ internals

    def _boot(self, name: str, *args: Any, timeout: float | None = None) -> Any:
        self._check_usable()
        try:
            return self._chan.call(0, _OP_CALL, name, args, {}, timeout)
        finally:
            # The runtime flushed before answering: what the call printed is in
            # the pipes now; deliver it before returning.
            self._sink.drain()

    def _add_grants(self, grants: Mapping[str, Any]) -> None:
        self._boot("grant", dict(grants))
        self._maybe_install_fs(grants)

    def _check_usable(self) -> None:
        if self._closed:
            raise SandboxError("this sandbox is closed")
        dead = self._chan.dead
        if dead is not None:
            raise SandboxError(f"this sandbox is dead: {dead}") from dead

    def _running(self) -> bool:
        """Usable and its process alive (asked of the pidfd, not the exit notice)."""
        return self.alive and self._proc.running()

    def _set_awaiter(self, awaiter: Callable[[Any], Any] | None) -> None:
        """Who runs what ``async def`` capabilities return (AsyncSandbox)."""
        self._session.awaiter = awaiter

    # -- deadlines (see capbridge._deadline) ----------------------------------------

    def _on_deadline(self, qid: int) -> None:
        if self._enforcer is not None and not self._closed:
            self._enforcer.fire(qid)

    def _interrupt(self, rec: Timed) -> None:
        """Ask the sandbox to stop the call ``rec``; never blocks for long."""
        self._proc.using_pidfd(lambda pidfd: _interrupt.send(pidfd, rec.qid))
        self._chan.wake()
        listener = self._on_interrupt
        if listener is not None:
            listener(rec.ident)

    def _kill_for(self, err: BaseException) -> None:
        """End the sandbox because of ``err``, which the waiting calls then raise."""
        if self._chan.dead is not None or self._closed:
            return
        self._killed_by_us = True
        self._usage()
        self._proc.kill()
        self._chan.fail(err)
        listener = self._on_interrupt
        if listener is not None:
            listener(None)

    def _cpu_now(self) -> float:
        """CPU seconds the sandbox has used (``/proc/<pid>/stat``, clock ticks).

        With a per-call CPU budget it is read at every call, from a file kept open.
        """
        try:
            fd = self._stat_fd
            if fd < 0:
                fd = os.open(f"/proc/{self.pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
                if self.limits.call_cpu_seconds is not None and not self._closed:
                    self._stat_fd = fd
            try:
                data = os.pread(fd, 1024, 0)
            finally:
                if fd != self._stat_fd:
                    os.close(fd)
            fields = data.rsplit(b")", 1)[1].split()
            if fields[0] != b"Z":
                cpu = (int(fields[11]) + int(fields[12])) / _CLK_TCK
                if cpu > self._last_usage[0]:
                    self._last_usage = (cpu, self._last_usage[1])
        except (OSError, ValueError, IndexError):
            pass
        return self._last_usage[0]

    def _remote_error(self, data: tuple) -> BaseException:
        try:
            err = error_from_data(data, trusted=False)
        except ProtocolError as exc:
            return self._chan.fail(exc)
        if isinstance(err, RemoteError) and err.type_name == "MemoryError":
            limit = self.limits.memory_mb
            final = MemoryLimitExceeded(
                f"the sandbox ran out of memory (Limits.memory_mb={limit}); it was killed"
            )
            final.__cause__ = err
            self._killed_by_us = True
            self._proc.kill()
            return self._chan.fail(final)
        return err

    def _on_fatal(self, cause: BaseException) -> BaseException:
        """Turn the low-level reason a channel died into the error users see; kill."""
        self._enforcer = None  # it holds this sandbox's methods: a cycle once nothing fires
        if self._closed:
            return SandboxError("this sandbox is closed")
        if isinstance(cause, (MemoryLimitExceeded, CPULimitExceeded, SandboxTimeout)):
            return cause
        self._usage()
        self._proc.kill()
        status = self._proc.wait(5.0)
        if isinstance(cause, ProtocolError):
            err: BaseException = ProtocolError(f"{cause}; the sandbox was killed")
        elif isinstance(cause, KeyboardInterrupt):
            err = SandboxError("a KeyboardInterrupt on the host broke into a call to the sandbox "
                               "while it read the reply; the sandbox was killed")
            err.__cause__ = None
            return err
        elif status is not None and self._cpu_exhausted(status):
            err = CPULimitExceeded(
                f"the sandbox used up its CPU time (Limits.cpu_seconds={self.limits.cpu_seconds}); "
                "it was killed"
            )
        else:
            self._sink.drain()
            err = SandboxCrashed(f"the sandbox process died ({_describe_status(status)})"
                                 + self._sink.stderr_note(), *_status_fields(status))
        err.__cause__ = cause if isinstance(cause, BaseException) else None
        return err

    def _cpu_exhausted(self, status: Any) -> bool:
        limit = self.limits.cpu_seconds
        if limit is None:
            return False
        if status.signal == _signal.SIGXCPU:
            return True
        used = status.cpu_seconds if status.cpu_seconds is not None else self._last_usage[0]
        # As PID-namespace init the sandbox is ended by SIGKILL at the hard CPU limit.
        # rusage is tick-sampled and reads low on a busy machine, so only ask that a
        # good part of the limit was used (nothing else here sends SIGKILL).
        return status.signal == _signal.SIGKILL and not self._killed_by_us and used >= limit * 0.5

    def _usage(self) -> tuple[float, float]:
        """(CPU seconds, peak memory in MiB) read from ``/proc`` (last known once ended)."""
        self._cpu_now()
        try:
            with open(f"/proc/{self.pid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"VmHWM:"):
                        peak = int(line.split()[1]) / 1024
                        if peak > self._last_usage[1]:
                            self._last_usage = (self._last_usage[0], peak)
                        break
        except (OSError, ValueError, IndexError):
            pass
        return self._last_usage

    def _shutdown(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        chan = self._chan
        proc = self._proc
        self._usage()
        self._killed_by_us = True
        proc.kill()  # the fork server reaps it; its exit notice closes the pidfd
        chan.close()
        listener = self._on_interrupt
        if listener is not None:
            listener(None)
        try:
            self._sink.drain()
        except Exception:
            pass
        pump().unregister(self._sink)
        fds_free = chan.quiesce(1.0)
        with self._sink.lock:
            self._sink.detach()
            if fds_free:
                proc.close_fds()
            else:  # a thread is still in a read; it gets EOF and proc.__del__ closes the rest
                for name in ("out_fd", "err_fd"):
                    fd = getattr(proc, name)
                    if fd >= 0:
                        setattr(proc, name, -1)
                        os.close(fd)
        if self._stat_fd >= 0:
            os.close(self._stat_fd)
            self._stat_fd = -1


def _check_timeout(value: Any, what: str = "timeout") -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{what} must be a positive number of seconds or None, not {value!r}")
    return float(value)


def _check_grant_name(name: Any) -> None:
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"grant names must be identifiers, not {name!r}")


def _check_strict_available() -> None:
    try:
        from sandbox_vm import _probe
    except ImportError:
        return
    check = getattr(_probe, "strict_missing", None)
    if check is None:
        return
    missing = check()
    if missing:
        raise ConfinementUnavailable(
            "confinement='strict' needs rlimits, Landlock and seccomp, but this machine lacks: "
            + "; ".join(missing)
            + ". Run `capbridge check` for details, or pass confinement='best-effort'."
        )


def _status_fields(status: Any) -> tuple[int | None, int | None]:
    if status is None:
        return (None, None)
    return (status.exitcode, status.signal)


def _describe_status(status: Any) -> str:
    if status is None:
        return "exit status unknown"
    if status.signal is not None:
        try:
            name = _signal.Signals(status.signal).name
        except ValueError:
            name = str(status.signal)
        return f"killed by signal {name}"
    return f"exit code {status.exitcode}"
