"""The front door: :class:`Sandbox` and :class:`Limits`."""

from __future__ import annotations

import dataclasses
import os
import signal as _signal
import threading
import warnings
from typing import Any, Callable, Mapping

from ._channel import Channel
from ._errors import (
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
from ._expose import registered_value_types
from ._output import OutputSink, pump
from ._protocol import PROTOCOL_VERSION, Op, Tag, check_message
from ._host_session import HostSession, ShippedCall
from ._session import AuditEvent

__all__ = ["Sandbox", "Limits"]

_OP_CALL = int(Op.CALL)
_HELLO_TIMEOUT = 30.0


@dataclasses.dataclass(frozen=True)
class Limits:
    """Resource limits of one sandbox; ``None`` lifts a limit.

    ``memory_mb``: memory of the whole sandbox process. ``cpu_seconds``: CPU time over
    its life. ``wall_seconds``: wall-clock time of each call from the host into the
    sandbox. ``max_message_mb``: the largest frame either side may send.
    ``max_output_kb``: bytes of stdout+stderr passed on to the host.
    ``max_decoded_mb``: host memory one message from the sandbox may decode into (it
    is also held to 14 times the message's size, or 8 MiB when that is more).
    """

    memory_mb: int | None = 512
    cpu_seconds: float | None = 60
    wall_seconds: float | None = 30
    max_message_mb: float | None = 64
    max_output_kb: int | None = 1024
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


class Sandbox:
    """One sandboxed Python process and the capabilities granted to it.

    ``grants`` become globals of the code run inside. Use it as a context manager
    or call :meth:`close`. See the package documentation for every argument.
    """

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
        _awaiter: Callable[[Any], Any] | None = None,
    ) -> None:
        from sandbox_vm import SandboxConfig
        from sandbox_vm._config import sandbox_options
        from sandbox_vm._spawn import spawn

        if confinement not in _CONFINEMENTS:
            raise ValueError(f"confinement must be one of {', '.join(map(repr, _CONFINEMENTS))}, not {confinement!r}")
        packages = sandbox_options(allow_imports=allow_imports, preload=preload, env=env)
        if grants is not None and not isinstance(grants, Mapping):
            raise TypeError("grants must be a mapping of names to objects")
        for name in grants or ():
            _check_grant_name(name)
        self.limits = limits if limits is not None else Limits()
        if not isinstance(self.limits, Limits):
            raise TypeError("limits must be a capbridge.Limits")
        self.confinement = confinement
        self.debug = debug
        self._closed = False
        self._dead_reason: BaseException | None = None
        self._timed_out = False
        self._killed_by_us = False
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
        self._session = HostSession(max_frame=self.limits.max_frame, debug=debug,
                                    allow_modules=packages["allow_imports"], audit=audit, awaiter=_awaiter,
                                    max_decoded=self.limits.max_decoded)
        self._chan = Channel(self._session, self._proc.rfd, self._proc.wfd,
                             on_fatal=self._on_fatal, raise_error=self._remote_error,
                             wall=self.limits.wall_seconds, on_deadline=self._on_deadline)
        cap = None if self.limits.max_output_kb is None else int(self.limits.max_output_kb * 1024)
        self._sink = OutputSink(f"sandbox {self.pid}", stdout, stderr, cap)
        self._sink.add(self._proc.out_fd, 1)
        self._sink.add(self._proc.err_fd, 2)
        pump().register(self._sink)
        try:
            self._handshake()
            vts = tuple((vt.name, vt.fields, vt.is_tuple) for vt in registered_value_types())
            if vts:
                self._boot("value_types", vts)
            if grants:
                self._boot("grant", dict(grants))
                self._maybe_install_fs(grants)
        except BaseException:
            self.kill()
            raise

    # ------------------------------------------------------------------ start-up

    def _handshake(self) -> None:
        result: list[Any] = []

        def read() -> None:
            try:
                result.append(self._chan.read_one())
            except BaseException as exc:
                result.append(exc)

        timer = threading.Timer(_HELLO_TIMEOUT, self._proc.kill)
        timer.daemon = True
        timer.start()
        try:
            read()
        finally:
            timer.cancel()
        body = result[0]
        if isinstance(body, BaseException):
            status = self._proc.wait(2.0)
            self._sink.drain()
            self._dead_reason = SandboxCrashed(
                f"the sandbox process ended before it was ready ({_describe_status(status)})"
                + self._sink.stderr_note(),
                *_status_fields(status),
            )
            raise self._dead_reason from body
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

    def exec(self, source: str, *, filename: str = "<sandbox>") -> None:
        """Run ``source`` in the sandbox's ``__main__``; grants are its globals."""
        if not isinstance(source, str):
            raise TypeError("source must be a str")
        self._boot("exec", source, filename)

    def eval(self, expression: str) -> Any:
        """Evaluate ``expression`` in the sandbox; the result comes back by value or as a proxy."""
        if not isinstance(expression, str):
            raise TypeError("expression must be a str")
        return self._boot("eval", expression)

    def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Ship ``fn`` by value (cloudpickle) and run ``fn(*args, **kwargs)`` in the sandbox."""
        if not callable(fn):
            raise TypeError("Sandbox.call needs a callable")
        return self._boot("call", ShippedCall(fn, args, kwargs))

    def load(self, source: str, name: str) -> Any:
        """Create module ``name`` from ``source`` in the sandbox; returns a proxy to it."""
        if not isinstance(name, str) or not all(p.isidentifier() for p in name.split(".")):
            raise ValueError(f"module name must be a dotted identifier, not {name!r}")
        return self._boot("load", source, name)

    def grant(self, name: str, obj: Any) -> None:
        """Add a grant to the running sandbox (a global of later code)."""
        _check_grant_name(name)
        self._boot("grant", {name: obj})
        if name == "fs":
            self._maybe_install_fs({name: obj})

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
        return not self._closed and self._chan.dead is None

    def close(self) -> None:
        """End the sandbox: close the channel, let it exit, kill it if it lingers.

        Idempotent; never raises.
        """
        try:
            self._shutdown(graceful=True)
        except BaseException:  # pragma: no cover - close never raises
            pass

    def kill(self) -> None:
        """End the sandbox at once (SIGKILL)."""
        try:
            self._shutdown(graceful=False)
        except BaseException:  # pragma: no cover
            pass

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if not self._closed:
                self._shutdown(graceful=False)
        except Exception:
            pass

    def __repr__(self) -> str:
        state = "closed" if self._closed else "dead" if self._chan.dead is not None else "running"
        return f"<Sandbox pid={self.pid} {self.confinement} {state}>"

    # ------------------------------------------------------------------ internals

    def _boot(self, name: str, *args: Any) -> Any:
        self._check_usable()
        try:
            return self._chan.call(0, _OP_CALL, name, args, {})
        finally:
            # The runtime flushed before answering: what the call printed is in
            # the pipes now; deliver it before returning.
            self._sink.drain()

    def _check_usable(self) -> None:
        if self._closed:
            raise SandboxError("this sandbox is closed")
        dead = self._chan.dead
        if dead is not None:
            raise SandboxError(f"this sandbox is dead: {dead}") from dead

    def _on_deadline(self) -> None:
        if self._chan.dead is None and not self._closed:
            self._timed_out = True
            self._killed_by_us = True
            self._proc.kill()
            # Now, not when a reader sees EOF: the thread that would is perhaps
            # decoding a reply, and stops at its next frame when the channel is dead.
            self._chan.fail(EOFError("the call ran past Limits.wall_seconds"))

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
        if self._closed:
            return SandboxError("this sandbox is closed")
        if isinstance(cause, (MemoryLimitExceeded, CPULimitExceeded, SandboxTimeout)):
            return cause
        self._usage()
        self._proc.kill()
        status = self._proc.wait(5.0)
        if isinstance(cause, ProtocolError):
            err: BaseException = ProtocolError(f"{cause}; the sandbox was killed")
        elif self._timed_out:
            err = SandboxTimeout(
                f"a call into the sandbox ran longer than Limits.wall_seconds="
                f"{self.limits.wall_seconds}; the sandbox was killed"
            )
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
        pid = self.pid
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            ticks = os.sysconf("SC_CLK_TCK")
            cpu = (int(fields[11]) + int(fields[12])) / ticks
            peak = self._last_usage[1]
            with open(f"/proc/{pid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"VmHWM:"):
                        peak = int(line.split()[1]) / 1024
                        break
            if fields[0] != b"Z":
                self._last_usage = (max(cpu, self._last_usage[0]), max(peak, self._last_usage[1]))
        except (OSError, ValueError, IndexError):
            pass
        return self._last_usage

    def _shutdown(self, *, graceful: bool) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._usage()
        chan = self._chan
        proc = self._proc
        if chan.dead is None:
            chan.close()
        try:
            os.close(proc.wfd)
        except OSError:
            pass
        proc.wfd = -1
        if graceful and proc.wait(1.0) is not None:
            pass
        else:
            self._killed_by_us = True
            proc.kill()
            proc.wait(5.0)
        try:
            self._sink.drain()
        except Exception:
            pass
        pump().unregister(self._sink)
        with self._sink.lock:
            proc.close_fds()


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
