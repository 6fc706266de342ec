"""What the host asks of one sandboxed process (plain data, picklable)."""

from __future__ import annotations

import dataclasses

CONFINEMENTS = ("strict", "best-effort", "none")


@dataclasses.dataclass(frozen=True)
class SandboxConfig:
    """Settings a sandbox process is started with.

    ``memory_mb`` and ``cpu_seconds`` are ``None`` when lifted.
    """

    confinement: str = "strict"
    memory_mb: int | None = 512
    cpu_seconds: float | None = 60
    allow_imports: tuple[str, ...] = ()
    max_message_bytes: int = 64 * 1024 * 1024
    max_decoded_bytes: int = 512 * 1024 * 1024
    debug: bool = False

    def __post_init__(self) -> None:
        if self.confinement not in CONFINEMENTS:
            raise ValueError(
                f"confinement must be one of {', '.join(map(repr, CONFINEMENTS))}, "
                f"not {self.confinement!r}"
            )


@dataclasses.dataclass(frozen=True)
class ExitStatus:
    """How a sandbox process ended: exactly one of the two is set."""

    exitcode: int | None = None
    signal: int | None = None
    #: CPU time (user + system) the process used over its life, when known.
    cpu_seconds: float | None = dataclasses.field(default=None, compare=False)

    @classmethod
    def from_wait_status(cls, status: int, cpu_seconds: float | None = None) -> "ExitStatus":
        import os

        if os.WIFSIGNALED(status):
            return cls(signal=os.WTERMSIG(status), cpu_seconds=cpu_seconds)
        return cls(exitcode=os.waitstatus_to_exitcode(status), cpu_seconds=cpu_seconds)
