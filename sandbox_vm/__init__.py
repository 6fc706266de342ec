"""The sandboxed process: spawning, the fork server, OS lockdown, limits and the
in-sandbox runtime."""

from ._config import ExitStatus, SandboxConfig


def prestart(timeout: float = 30.0) -> None:
    """Start this process's fork server now, so the first sandbox starts warm."""
    from ._spawn import prestart as _prestart

    _prestart(timeout)


__all__ = ["ExitStatus", "SandboxConfig", "prestart"]
