"""``Execution``: what one :meth:`Sandbox.execute` run produced, as data."""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["Execution"]


@dataclasses.dataclass(frozen=True)
class Execution:
    """The result of :meth:`Sandbox.execute`: one run of code, as an agent loop needs it.

    ``value`` is the value of the final expression statement (None when the code
    does not end with one); it crosses like a result of :meth:`Sandbox.eval`.
    ``stdout`` and ``stderr`` are what this run printed, each cut at
    ``Limits.max_output_kb`` with a visible marker saying how much was discarded.
    ``error`` is the exception the other calls would have raised
    (:class:`RemoteError` for an exception in the code, :class:`CallTimeout`,
    :class:`SandboxTimeout`, a limit error, ...) or None. ``duration`` is the wall
    time of the run in seconds, ``cpu_seconds`` the CPU time the sandbox used
    meanwhile, and ``alive`` whether the sandbox can still be used afterwards.
    """

    value: Any
    stdout: str
    stderr: str
    error: BaseException | None
    duration: float
    cpu_seconds: float
    alive: bool

    @property
    def ok(self) -> bool:
        """True when the code ran to its end without an error."""
        return self.error is None
