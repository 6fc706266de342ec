"""``SandboxPool``: fresh, locked-down sandboxes kept ready, never reused."""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from typing import Any, AsyncIterator, Callable, ContextManager, Mapping

from ._errors import SandboxError
from ._sandbox import Sandbox
from ._tracebacks import trim

__all__ = ["SandboxPool"]

_RETRY_AFTER_FAILURE = 1.0
#: A replacement starts this long after a checkout (or when a sandbox comes back, or
#: the pool runs dry), so starting it does not compete with the checkout's own work.
REFILL_DELAY = 0.02


class SandboxPool:
    """Keeps ``size`` fresh sandboxes started, locked down and set up.

    ``with pool.sandbox() as sb:`` hands out one that no one has used and closes it
    afterwards; a background thread starts its replacement once the checkout is
    returned or a few milliseconds have passed (at once if the pool ran dry), so
    the start does not compete with the checkout's work. An idle sandbox that died
    is noticed through its pidfd and replaced, never handed out.

    :param size: how many sandboxes to keep ready.
    :param setup: host code run on each sandbox before it is handed out, called with
        the :class:`Sandbox` (e.g. ``lambda sb: sb.exec("import json")``); a sandbox
        whose setup raises is discarded.
    :param sandbox_kwargs: the :class:`Sandbox` arguments every sandbox starts with
        (``grants``, ``limits``, ``confinement``, ``stdout``, ...).
    """

    def __init__(self, size: int, *, setup: Callable[[Sandbox], Any] | None = None,
                 **sandbox_kwargs: Any) -> None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError("SandboxPool size must be a positive int")
        if setup is not None and not callable(setup):
            raise TypeError("setup must be a callable taking the Sandbox")
        self.size = size
        self._setup = setup
        self._kwargs = sandbox_kwargs
        self._ready: collections.deque[Sandbox] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._starting = 0
        self._counts = collections.Counter({"started": 0, "handed_out": 0, "replaced_dead": 0,
                                            "start_failures": 0})
        self._in_use = 0
        self._refill_at = 0.0
        self._error: BaseException | None = None
        self._debug = bool(sandbox_kwargs.get("debug", False))
        # Fail fast on bad arguments (and warm the fork server) before any thread runs.
        try:
            self._ready.append(self._new())
        except BaseException as exc:
            trim(exc, self._debug)
            raise
        self._thread = threading.Thread(target=self._fill, name="capbridge-pool", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ filling

    def _new(self) -> Sandbox:
        sb = Sandbox(**self._kwargs)
        try:
            if self._setup is not None:
                self._setup(sb)
        except BaseException:
            sb.kill()
            raise
        with self._cond:
            self._counts["started"] += 1
        return sb

    def _fill(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    if len(self._ready) + self._starting >= self.size:
                        self._cond.wait()
                        continue
                    wait = self._refill_at - time.monotonic()
                    if wait <= 0 or not self._ready:
                        break
                    self._cond.wait(wait)
                if self._closed:
                    return
                self._starting += 1
            sb: Sandbox | None = None
            try:
                sb = self._new()
            except BaseException as exc:  # keep the pool alive; report in stats()
                with self._cond:
                    self._error = exc
                    self._counts["start_failures"] += 1
            finally:
                with self._cond:
                    self._starting -= 1
                    if sb is not None:
                        if self._closed:
                            sb.close()
                        else:
                            self._ready.append(sb)
                            self._error = None
                    self._cond.notify_all()
            if sb is None:
                with self._cond:
                    if self._cond.wait(_RETRY_AFTER_FAILURE) and self._closed:
                        return

    def _pop_live(self) -> Sandbox | None:
        """A ready sandbox whose process is alive, or None when none is ready."""
        while True:
            with self._cond:
                if self._closed:
                    raise SandboxError("this SandboxPool is closed")
                sb = self._ready.popleft() if self._ready else None
                self._refill_at = time.monotonic() + REFILL_DELAY
                self._cond.notify_all()
            if sb is None or sb._running():
                return sb
            with self._cond:
                self._counts["replaced_dead"] += 1
            sb.kill()  # died while waiting: never hand out a broken one

    def _checkout(self, sb: Sandbox, grants: Mapping[str, Any] | None, stdout: Any, stderr: Any,
                  in_use: bool = True) -> Sandbox:
        try:
            if stdout is not None or stderr is not None:
                sb._sink.set_targets(stdout if stdout is not None else self._kwargs.get("stdout"),
                                     stderr if stderr is not None else self._kwargs.get("stderr"))
            if grants:
                sb._add_grants(grants)
        except BaseException:
            sb.kill()
            raise
        with self._cond:
            self._counts["handed_out"] += 1
            self._in_use += in_use
        return sb

    def _returned(self, sb: Sandbox) -> None:
        sb.close()
        with self._cond:
            self._in_use -= 1
            self._refill_at = 0.0
            self._cond.notify_all()

    # ------------------------------------------------------------------ handing out

    def take(self, grants: Mapping[str, Any] | None = None, stdout: Any = None, stderr: Any = None) -> Sandbox:
        """A fresh sandbox, now yours to close (:meth:`sandbox` does that for you).

        When none is ready (all taken and the replacements still starting), a new
        one is started right away rather than waiting for the pool.

        :param grants: more grants for this checkout only, added to the pool's.
        :param stdout: where this checkout's output goes (default: the pool's).
        :param stderr: where this checkout's standard error goes (default: the pool's).
        """
        try:
            return self._take(grants, stdout, stderr, in_use=False)
        except BaseException as exc:
            trim(exc, self._debug)
            raise

    def _take(self, grants: Mapping[str, Any] | None, stdout: Any, stderr: Any, in_use: bool) -> Sandbox:
        sb = self._pop_live()
        if sb is None:
            sb = self._new()
        return self._checkout(sb, grants, stdout, stderr, in_use)

    def sandbox(self, grants: Mapping[str, Any] | None = None, stdout: Any = None,
                stderr: Any = None) -> ContextManager[Sandbox]:
        """``with pool.sandbox() as sb:`` - a fresh, live sandbox, closed afterwards.

        :param grants: grants of this checkout (see :meth:`take`).
        :param stdout: output route of this checkout (see :meth:`take`).
        :param stderr: standard error route of this checkout (see :meth:`take`).
        """
        return _Checkout(self, grants, stdout, stderr)

    @contextlib.asynccontextmanager
    async def async_sandbox(self, grants: Mapping[str, Any] | None = None, stdout: Any = None,
                            stderr: Any = None) -> AsyncIterator[Any]:
        """``async with pool.async_sandbox() as sb:`` - the same as :meth:`sandbox`, as
        an :class:`AsyncSandbox` bound to the running loop (``async def`` capabilities
        work). Nothing blocking runs on the loop: a sandbox started because none was
        ready starts on the AsyncSandbox's own thread.

        :param grants: grants of this checkout (see :meth:`take`).
        :param stdout: output route of this checkout (see :meth:`take`).
        :param stderr: standard error route of this checkout (see :meth:`take`).
        """
        from ._aio import AsyncSandbox

        try:
            asb = await AsyncSandbox._from_pool(self._pop_live, self._new)
            try:
                await asb.run(self._checkout, asb.sandbox, grants, stdout, stderr)
            except BaseException:
                await asb.close()
                raise
        except BaseException as exc:
            trim(exc, self._debug)
            raise
        try:
            yield asb
        finally:
            await asb.close()
            with self._cond:
                self._in_use -= 1
                self._refill_at = 0.0
                self._cond.notify_all()

    # ------------------------------------------------------------------ state

    def stats(self) -> dict[str, Any]:
        """Health and counts.

        ``ready`` (started and waiting), ``starting``, ``in_use`` (checked out through
        :meth:`sandbox` / :meth:`async_sandbox` right now), ``size``, ``started`` (in
        all), ``handed_out``, ``replaced_dead`` (idle ones found dead and discarded),
        ``start_failures``, ``last_error`` (why the last start failed, if the one
        after it has not succeeded yet) and ``healthy`` (open, refilling, and the
        last start succeeded).
        """
        with self._cond:
            error = self._error
            return {
                "size": self.size,
                "ready": len(self._ready),
                "starting": self._starting,
                "in_use": self._in_use,
                **self._counts,
                "last_error": None if error is None else f"{type(error).__name__}: {error}",
                "healthy": not self._closed and error is None and self._thread.is_alive(),
            }

    def close(self) -> None:
        """Stop refilling and close the idle sandboxes (checked-out ones stay yours). Idempotent."""
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


class _Checkout:
    """What ``SandboxPool.sandbox()`` returns: the checkout happens on entering."""

    __slots__ = ("_pool", "_args", "_sb")

    def __init__(self, pool: SandboxPool, grants: Mapping[str, Any] | None, stdout: Any, stderr: Any) -> None:
        self._pool = pool
        self._args = (grants, stdout, stderr)
        self._sb: Sandbox | None = None

    def __enter__(self) -> Sandbox:
        try:
            self._sb = self._pool._take(*self._args, in_use=True)
        except BaseException as exc:
            trim(exc, self._pool._debug)
            raise
        return self._sb

    def __exit__(self, *exc: Any) -> None:
        sb, self._sb = self._sb, None
        if sb is not None:
            self._pool._returned(sb)
