"""The error classes of capbridge (all re-exported from :mod:`capbridge`)."""

from __future__ import annotations

__all__ = [
    "CapbridgeError",
    "SandboxError",
    "RemoteError",
    "SandboxTimeout",
    "CallTimeout",
    "ResourceLimitExceeded",
    "MemoryLimitExceeded",
    "CPULimitExceeded",
    "SandboxCrashed",
    "ProtocolError",
    "CapabilityError",
    "RevokedError",
    "ConfinementUnavailable",
]


class CapbridgeError(Exception):
    """Base class of every error capbridge raises."""


class SandboxError(CapbridgeError):
    """The sandboxed side failed, or the sandbox is closed or dead."""


class RemoteError(SandboxError):
    """Code running in the sandbox raised an exception.

    The exception itself never crosses the boundary: only its type name, its
    message and its traceback rendered as text do.
    """

    def __init__(self, type_name: str, message: str, remote_traceback: str = "") -> None:
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback

    def __reduce__(self):  # keep it picklable for users who log or queue it
        return (type(self), (self.type_name, self.message, self.remote_traceback))


class SandboxTimeout(SandboxError):
    """A call into the sandbox ran past its time; the sandbox was killed.

    Raised when a call outlives ``Limits.wall_seconds``, or when a call given a
    ``timeout=`` (or run inside :meth:`Sandbox.deadline`) did not stop within the
    grace period after it was interrupted.
    """


class CallTimeout(SandboxTimeout):
    """A call's deadline passed; its code was interrupted and stopped in time.

    The sandbox lives on with its state: later calls work as before. Inside the
    sandbox, the interrupted code sees this exception raised where it was running.
    """


class ResourceLimitExceeded(SandboxError):
    """The sandbox ran out of one of its resources and was killed."""


class MemoryLimitExceeded(ResourceLimitExceeded):
    """The sandbox ran out of memory (``Limits.memory_mb``)."""


class CPULimitExceeded(ResourceLimitExceeded):
    """The sandbox used up its CPU time (``Limits.cpu_seconds``)."""


class SandboxCrashed(SandboxError):
    """The sandbox process died.

    ``exitcode`` is its exit status when it exited, ``signal`` the number of the
    signal that killed it; the other one is ``None``.
    """

    def __init__(self, message: str, exitcode: int | None = None, signal: int | None = None) -> None:
        super().__init__(message)
        self.exitcode = exitcode
        self.signal = signal


class ProtocolError(CapbridgeError):
    """The sandbox sent something malformed or forbidden; it was killed."""


class CapabilityError(CapbridgeError):
    """An object may not cross the boundary, or a member is not exposed."""


class RevokedError(CapabilityError):
    """The capability was revoked."""


class ConfinementUnavailable(CapbridgeError):
    """This machine cannot give the confinement that was asked for."""


def safe_repr(value: object, limit: int = 60) -> str:
    """A short repr of untrusted data that cannot recurse, raise or grow large."""
    t = type(value)
    if t is int:
        bits = value.bit_length()  # type: ignore[attr-defined]
        return repr(value) if bits < 128 else f"<int of {bits} bits>"
    if t in (str, bytes, bytearray):
        text = repr(value[: limit + 1])  # type: ignore[index]
        return text if len(value) <= limit else text[:limit] + "..."  # type: ignore[arg-type]
    if t in (float, bool, type(None)):
        return repr(value)
    return f"<{t.__name__}>"


for _name in __all__:
    globals()[_name].__module__ = "capbridge"
del _name
