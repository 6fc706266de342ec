"""What the host's audit hook is given: one event per call through a capability."""

from __future__ import annotations

import dataclasses

__all__ = ["AuditEvent"]


@dataclasses.dataclass(frozen=True)
class AuditEvent:
    """One call from the sandbox through a capability, as the audit hook sees it."""

    capability: str
    member: str
    op: str
    arg_bytes: int
    duration: float
    outcome: str  # "ok" or the exception's type name
