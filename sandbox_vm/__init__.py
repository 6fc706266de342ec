"""The sandboxed process: spawning, the fork server, OS lockdown, limits and the
in-sandbox runtime."""

from ._config import ExitStatus, SandboxConfig

__all__ = ["ExitStatus", "SandboxConfig"]
