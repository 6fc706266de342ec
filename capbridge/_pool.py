"""``SandboxPool``: fresh, locked-down sandboxes kept ready, never reused."""

from __future__ import annotations

import collections
import contextlib
import threading
from typing import Any, Iterator

from ._errors import SandboxError
from ._sandbox import Sandbox

__all__ = ["SandboxPool"]


class SandboxPool:
    """Keeps ``size`` fresh sandboxes started and locked down.

    ``with pool.sandbox() as sb:`` hands out one that has never run anything and
    closes it afterwards; a background thread starts its replacement. Every
    sandbox gets the same ``sandbox_kwargs`` (grants, limits, confinement, ...).
    """

    def __init__(self, size: int, **sandbox_kwargs: Any) -> None:
        if not isinstance(size, int) or size < 1:
            raise ValueError("SandboxPool size must be a positive int")
        self.size = size
        self._kwargs = sandbox_kwargs
        self._ready: collections.deque[Sandbox] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._starting = 0
        self._error: BaseException | None = None
        # Fail fast on bad arguments (and warm the fork server) before any thread runs.
        first = Sandbox(**sandbox_kwargs)
        self._ready.append(first)
        self._thread = threading.Thread(target=self._fill, name="capbridge-pool", daemon=True)
        self._thread.start()

    def _fill(self) -> None:
        while True:
            with self._cond:
                while not self._closed and len(self._ready) + self._starting >= self.size:
                    self._cond.wait()
                if self._closed:
                    return
                self._starting += 1
            sb: Sandbox | None = None
            try:
                sb = Sandbox(**self._kwargs)
            except BaseException as exc:  # keep the pool alive; report on the next take
                with self._cond:
                    self._error = exc
            finally:
                with self._cond:
                    self._starting -= 1
                    if sb is not None:
                        if self._closed:
                            sb.close()
                        else:
                            self._ready.append(sb)
                    self._cond.notify_all()
            if sb is None:
                with self._cond:
                    if self._cond.wait(1.0) and self._closed:
                        return

    def take(self) -> Sandbox:
        """A fresh sandbox, now yours to close (``sandbox()`` does that for you).

        When none is ready (all taken and the replacements still starting), a new
        one is started right away rather than waiting for the pool.
        """
        while True:
            with self._cond:
                if self._closed:
                    raise SandboxError("this SandboxPool is closed")
                sb = self._ready.popleft() if self._ready else None
                self._cond.notify_all()
            if sb is None:
                return Sandbox(**self._kwargs)
            if sb.alive and sb._proc.poll() is None:
                return sb
            sb.close()  # died while waiting: never hand out a broken one

    @contextlib.contextmanager
    def sandbox(self) -> Iterator[Sandbox]:
        """``with pool.sandbox() as sb:`` - a fresh sandbox, closed afterwards."""
        sb = self.take()
        try:
            yield sb
        finally:
            sb.close()

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {"ready": len(self._ready), "starting": self._starting, "size": self.size}

    def close(self) -> None:
        """Stop refilling and close the idle sandboxes. Idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            idle = list(self._ready)
            self._ready.clear()
            self._cond.notify_all()
        for sb in idle:
            sb.close()
        self._thread.join(5)

    def __enter__(self) -> "SandboxPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
