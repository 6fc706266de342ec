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

__all__ += ["Sandbox", "AsyncSandbox", "SandboxPool", "gather", "Limits", "Execution", "Proxy", "AuditEvent"]

Proxy.__module__ = "capbridge"

#: Host-only names, imported on first use: inside a sandbox, and in the fork server
#: that starts sandboxes, ``import capbridge`` brings only what the sandbox side needs.
_LAZY = {
    "Sandbox": ("._sandbox", "Sandbox"),
    "Limits": ("._sandbox", "Limits"),
    "Execution": ("._execution", "Execution"),
    "AuditEvent": ("._audit", "AuditEvent"),
    "AsyncSandbox": ("._aio", "AsyncSandbox"),
    "SandboxPool": ("._pool", "SandboxPool"),
    "gather": ("._gather", "gather"),
}


def __getattr__(name: str) -> object:
    spec = _LAZY.get(name)
    if spec is None:
        raise AttributeError(f"module 'capbridge' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(spec[0], __name__), spec[1])
    value.__module__ = "capbridge"
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


#: Inside the sandbox: the grants, by name (empty on the host).
grants: dict = {}
