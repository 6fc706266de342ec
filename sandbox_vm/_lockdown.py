"""Lockdown of a new sandbox process (placeholder: to be replaced by the ordered plan)."""

from __future__ import annotations

import dataclasses

from ._config import SandboxConfig


class LockdownFailed(Exception):
    """A lockdown step failed: ``step`` names it, ``errno`` and ``hint`` say why."""

    def __init__(self, step: str, errno: int, hint: str) -> None:
        super().__init__(f"failed at step {step}: errno {errno}: {hint}")
        self.step = step
        self.errno = errno
        self.hint = hint


@dataclasses.dataclass(frozen=True)
class LayerState:
    layer: str
    in_force: bool
    detail: str = ""


@dataclasses.dataclass(frozen=True)
class LockdownReport:
    layers: tuple[LayerState, ...] = ()

    def missing(self) -> list[str]:
        return [l.layer for l in self.layers if not l.in_force]


def lock_down(config: SandboxConfig, *, keep_fds: tuple[int, ...]) -> LockdownReport:
    return LockdownReport(())
