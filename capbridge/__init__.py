"""capbridge: run untrusted Python in a kernel-confined process and hand it only the
objects it should reach."""

from ._errors import (
    CapabilityError,
    CapbridgeError,
    ConfinementUnavailable,
    CPULimitExceeded,
    MemoryLimitExceeded,
    ProtocolError,
    RemoteError,
    ResourceLimitExceeded,
    RevokedError,
    SandboxCrashed,
    SandboxError,
    SandboxTimeout,
)
from ._expose import capability, expose, facet, revocable, value_type

__all__ = [
    "expose",
    "capability",
    "facet",
    "revocable",
    "value_type",
    "CapbridgeError",
    "SandboxError",
    "RemoteError",
    "SandboxTimeout",
    "ResourceLimitExceeded",
    "MemoryLimitExceeded",
    "CPULimitExceeded",
    "SandboxCrashed",
    "ProtocolError",
    "CapabilityError",
    "RevokedError",
    "ConfinementUnavailable",
]

from ._aio import AsyncSandbox
from ._pool import SandboxPool
from ._proxy import Proxy
from ._sandbox import Limits, Sandbox
from ._session import AuditEvent

__all__ += ["Sandbox", "AsyncSandbox", "SandboxPool", "Limits", "Proxy", "AuditEvent"]

for _obj in (Sandbox, AsyncSandbox, SandboxPool, Limits, Proxy, AuditEvent):
    _obj.__module__ = "capbridge"
del _obj

#: Inside the sandbox: the grants, by name (empty on the host).
grants: dict = {}
