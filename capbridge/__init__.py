"""capbridge: run untrusted Python in a kernel-confined process and hand it only the
objects it should reach."""

from ._errors import (
    CallTimeout,
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
from ._expose import capability, expose, value_type
from ._membrane import facet, revocable

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

from ._proxy import Proxy
from ._execution import Execution
from ._sandbox import Limits, Sandbox
from ._session import AuditEvent

__all__ += ["Sandbox", "AsyncSandbox", "SandboxPool", "gather", "Limits", "Execution", "Proxy", "AuditEvent"]

for _obj in (Sandbox, Limits, Execution, Proxy, AuditEvent):
    _obj.__module__ = "capbridge"
del _obj


def __getattr__(name: str) -> object:
    # AsyncSandbox pulls in asyncio; the sandbox side never needs it.
    if name == "AsyncSandbox":
        from ._aio import AsyncSandbox as value
    elif name == "SandboxPool":
        from ._pool import SandboxPool as value
    elif name == "gather":
        from ._gather import gather as value
    else:
        raise AttributeError(f"module 'capbridge' has no attribute {name!r}")
    value.__module__ = "capbridge"
    globals()[name] = value
    return value

#: Inside the sandbox: the grants, by name (empty on the host).
grants: dict = {}
