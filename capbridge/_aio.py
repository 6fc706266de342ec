"""``AsyncSandbox``: the front door for asyncio hosts.

Each method runs the blocking call on a worker thread, so the event loop keeps
running; capabilities whose methods are ``async def`` are awaited on the host's
loop while the sandbox waits for them.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any, Callable, Mapping

from ._sandbox import Sandbox

__all__ = ["AsyncSandbox"]


class AsyncSandbox:
    """The :class:`Sandbox` API with ``async`` methods.

    ``async with AsyncSandbox(grants, ...) as sb: await sb.eval("...")``. Proxies it
    returns are ordinary (blocking) proxies: call them from a worker thread, e.g.
    ``await asyncio.to_thread(proxy.method, arg)``, or through :meth:`run`.
    """

    def __init__(self, grants: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        self._grants = grants
        self._kwargs = kwargs
        self._sb: Sandbox | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> "AsyncSandbox":
        """Start the sandbox (``async with`` does this)."""
        if self._sb is None:
            self._loop = asyncio.get_running_loop()
            self._sb = await self._loop.run_in_executor(
                None, functools.partial(Sandbox, self._grants, _awaiter=self._await_on_loop, **self._kwargs)
            )
        return self

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
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    @property
    def sandbox(self) -> Sandbox:
        if self._sb is None:
            raise RuntimeError("AsyncSandbox is not started: use `async with` or `await sb.start()`")
        return self._sb

    async def run(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run a blocking callable (e.g. a proxy method) on a worker thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, functools.partial(fn, *args, **kwargs))

    async def exec(self, source: str, *, filename: str = "<sandbox>") -> None:
        await self.run(self.sandbox.exec, source, filename=filename)

    async def eval(self, expression: str) -> Any:
        return await self.run(self.sandbox.eval, expression)

    async def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        return await self.run(self.sandbox.call, fn, *args, **kwargs)

    async def load(self, source: str, name: str) -> Any:
        return await self.run(self.sandbox.load, source, name)

    async def grant(self, name: str, obj: Any) -> None:
        await self.run(self.sandbox.grant, name, obj)

    async def stats(self) -> dict[str, Any]:
        return self.sandbox.stats()

    async def close(self) -> None:
        if self._sb is not None:
            await self.run(self._sb.close)

    async def kill(self) -> None:
        if self._sb is not None:
            self._sb.kill()

    async def __aenter__(self) -> "AsyncSandbox":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()
