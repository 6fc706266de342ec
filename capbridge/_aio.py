"""``AsyncSandbox``: the front door for asyncio hosts.

Each AsyncSandbox runs its blocking work on threads of its own (a small pool that
grows with the number of its calls in flight, never the loop's default executor),
so one slow tenant cannot hold up another's calls and an ``async def`` capability
that itself needs the default executor (``asyncio.to_thread``, ``getaddrinfo``)
finds it free. Coroutines returned by capabilities run on the host's loop while the
sandbox waits for them.

Cancelling an awaitable cancels its work: a call is interrupted as if its deadline
had passed, and a start that is cancelled ends the half-started sandbox.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import threading
import time
from typing import Any, Callable, Iterator, Mapping

from ._deadline import DeadlineBlock
from ._errors import CallTimeout
from ._execution import Execution
from ._sandbox import Sandbox, _check_timeout
from ._tracebacks import trim

__all__ = ["AsyncSandbox"]

#: Most threads one AsyncSandbox uses at once (calls in flight, nested ones included).
MAX_THREADS = 16
# The absolute deadline set by ``AsyncSandbox.deadline`` blocks of the running task.
_until: contextvars.ContextVar[float | None] = contextvars.ContextVar("capbridge_until", default=None)


class AsyncSandbox:
    """The :class:`Sandbox` API with ``async`` methods.

    ``async with AsyncSandbox(grants, ...) as sb: await sb.eval("...")``. It takes
    the arguments of :class:`Sandbox`. Proxies it returns are ordinary (blocking)
    proxies: call them with :meth:`run` (``await sb.run(proxy.method, arg)``),
    which runs them on this sandbox's own threads.

    :param grants: objects by name, as for :class:`Sandbox`.
    :param kwargs: the other :class:`Sandbox` arguments (``limits``, ``confinement``,
        ``allow_imports``, ``stdout``, ``stderr``, ``debug``, ``audit``).
    """

    def __init__(self, grants: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        self._grants = grants
        self._kwargs = kwargs
        self._sb: Sandbox | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._workers = concurrent.futures.ThreadPoolExecutor(MAX_THREADS, thread_name_prefix="capbridge-async")
        self._lock = threading.Lock()
        self._abandoned = False
        #: Futures of async capabilities running on the loop, by the host thread waiting for them.
        self._pending: dict[concurrent.futures.Future, int] = {}
        self._expired: set[concurrent.futures.Future] = set()

    # ------------------------------------------------------------------ life

    async def start(self) -> "AsyncSandbox":
        """Start the sandbox (``async with`` does this). Cancelling it ends the sandbox."""
        try:
            if self._sb is None:
                await self._start_with(functools.partial(Sandbox, self._grants, **self._kwargs))
            return self
        except BaseException as exc:
            trim(exc, self._debug())
            raise

    async def _start_with(self, make: Callable[[], Sandbox]) -> None:
        self._loop = asyncio.get_running_loop()

        def build() -> Sandbox | None:
            sb = make()
            with self._lock:
                if self._abandoned:
                    sb.kill()
                    return None
                self._attach(sb)
            return sb

        future = self._workers.submit(build)
        try:
            await asyncio.wrap_future(future)
        except BaseException:
            self._abandon()
            raise

    def _attach(self, sb: Sandbox) -> None:
        sb._set_awaiter(self._await_on_loop)
        sb._on_interrupt = self._cancel_pending
        self._sb = sb

    def _abandon(self) -> None:
        """Give up on a start: the sandbox it makes (now or later) is ended."""
        with self._lock:
            self._abandoned = True
            sb, self._sb = self._sb, None
        if sb is not None:
            sb.kill()
        self._workers.shutdown(wait=False, cancel_futures=True)

    @classmethod
    async def _from_pool(cls, take: Callable[[], Sandbox | None], make: Callable[[], Sandbox]) -> "AsyncSandbox":
        asb = cls()
        asb._loop = asyncio.get_running_loop()
        sb = take()
        if sb is None:
            await asb._start_with(make)
        else:
            asb._attach(sb)
        return asb

    def _debug(self) -> bool:
        sb = self._sb
        return bool(sb.debug if sb is not None else self._kwargs.get("debug", False))

    @property
    def sandbox(self) -> Sandbox:
        """The :class:`Sandbox` underneath (its blocking methods must not run on the loop)."""
        if self._sb is None:
            raise RuntimeError("AsyncSandbox is not started: use `async with` or `await sb.start()`")
        return self._sb

    @property
    def alive(self) -> bool:
        """Whether the sandbox is started and can still be used."""
        return self._sb is not None and self._sb.alive

    async def close(self) -> None:
        """End the sandbox (at once: it does not wait for the process to be reaped)."""
        sb = self._sb
        if sb is not None:
            sb.close()
        self._workers.shutdown(wait=False, cancel_futures=True)

    async def kill(self) -> None:
        """End the sandbox at once."""
        await self.close()

    async def __aenter__(self) -> "AsyncSandbox":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # ------------------------------------------------------------------ calls

    @contextlib.contextmanager
    def deadline(self, seconds: float) -> Iterator[None]:
        """``with sb.deadline(seconds):`` - one deadline for every call this task awaits
        on the sandbox inside the block (``run`` included); see :meth:`Sandbox.deadline`.

        :param seconds: the time the whole block may take.
        """
        seconds = _check_timeout(seconds, "seconds")
        until = time.monotonic() + seconds  # type: ignore[operator]
        outer = _until.get()
        token = _until.set(until if outer is None else min(outer, until))
        try:
            yield
        finally:
            _until.reset(token)

    async def run(self, fn: Callable[..., Any], /, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """Run a blocking callable (e.g. a proxy method) on this sandbox's threads.

        :param fn: what to call; calls it makes into the sandbox obey ``timeout``.
        :param timeout: seconds those calls may take, as ``timeout=`` of :meth:`Sandbox.exec`
            (``timeout`` is taken by ``run``; wrap ``fn`` to pass one of that name).
        """
        try:
            sb = self.sandbox
            timeout = _check_timeout(timeout)
            until = _until.get()
            seconds = None
            if timeout is not None:
                mine = time.monotonic() + timeout
                if until is None or mine < until:
                    until, seconds = mine, timeout
            block = DeadlineBlock(sb._chan, seconds, until=until, source="timeout" if seconds else "deadline")
            if seconds is None and until is not None:
                block.seconds = max(0.0, until - time.monotonic())

            def job() -> Any:
                with block:
                    return fn(*args, **kwargs)

            future = self._workers.submit(job)
            try:
                return await asyncio.wrap_future(future)
            except asyncio.CancelledError:
                if not future.cancel():
                    block.expire("cancelled")
                raise
        except BaseException as exc:
            trim(exc, self._debug())
            raise

    async def exec(self, source: str, *, filename: str = "<sandbox>", timeout: float | None = None) -> None:
        """:meth:`Sandbox.exec` as a coroutine.

        :param source: Python statements.
        :param filename: the file name tracebacks show.
        :param timeout: seconds this call may take.
        """
        try:
            await self.run(self.sandbox.exec, source, filename=filename, timeout=timeout)
        except BaseException as exc:
            trim(exc, self._debug())
            raise

    async def eval(self, expression: str, *, timeout: float | None = None) -> Any:
        """:meth:`Sandbox.eval` as a coroutine.

        :param expression: one Python expression.
        :param timeout: seconds this call may take.
        """
        try:
            return await self.run(self.sandbox.eval, expression, timeout=timeout)
        except BaseException as exc:
            trim(exc, self._debug())
            raise

    async def execute(self, source: str, *, timeout: float | None = None) -> Execution:
        """:meth:`Sandbox.execute` as a coroutine.

        :param source: Python statements.
        :param timeout: seconds this run may take.
        """
        try:
            return await self.run(self.sandbox.execute, source, timeout=timeout)
        except BaseException as exc:
            trim(exc, self._debug())
            raise

    async def call(self, fn: Callable[..., Any], /, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """:meth:`Sandbox.call` as a coroutine.

        :param fn: the function to ship and run.
        :param timeout: seconds this call may take (taken by ``call``).
        """
        try:
            return await self.run(functools.partial(self.sandbox.call, fn, *args, **kwargs), timeout=timeout)
        except BaseException as exc:
            trim(exc, self._debug())
            raise

    async def load(self, source: str, name: str, *, timeout: float | None = None) -> Any:
        """:meth:`Sandbox.load` as a coroutine.

        :param source: the module's code.
        :param name: its module name.
        :param timeout: seconds running it may take.
        """
        try:
            return await self.run(self.sandbox.load, source, name, timeout=timeout)
        except BaseException as exc:
            trim(exc, self._debug())
            raise

    async def grant(self, name: str, obj: Any) -> None:
        """:meth:`Sandbox.grant` as a coroutine.

        :param name: the global name the sandbox sees.
        :param obj: a capability, a function or a value.
        """
        try:
            await self.run(self.sandbox.grant, name, obj)
        except BaseException as exc:
            trim(exc, self._debug())
            raise

    async def stats(self) -> dict[str, Any]:
        """:meth:`Sandbox.stats`."""
        return self.sandbox.stats()

    # ------------------------------------------------------------------ async capabilities

    def _await_on_loop(self, coro: Any) -> Any:
        loop = self._loop
        assert loop is not None
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            coro.close()
            raise RuntimeError(
                "an async capability was called while the event loop thread was blocked in a "
                "proxy call; call proxies with `await sb.run(proxy.method, ...)`"
            )
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        with self._lock:
            self._pending[future] = threading.get_ident()
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            if future in self._expired:
                raise CallTimeout("the call's deadline passed while this async capability was "
                                  "running; it was cancelled") from None
            raise
        finally:
            with self._lock:
                self._pending.pop(future, None)
                self._expired.discard(future)

    def _cancel_pending(self, ident: int | None) -> None:
        """Cancel the async capabilities host thread ``ident`` waits for (None: all)."""
        with self._lock:
            doomed = [f for f, i in self._pending.items() if ident is None or i == ident]
            self._expired.update(doomed)
        for future in doomed:
            future.cancel()
