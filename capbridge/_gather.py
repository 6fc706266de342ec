"""``gather``: call many sandboxes at once from one host thread and collect the replies.

Each call runs on a worker thread of a shared pool, so while one sandbox computes the
others do too (on as many cores as the machine has), and the host serves all their
callbacks meanwhile. The calling thread blocks until every call has ended.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
from typing import Any, Callable, Iterable

from ._deadline import DeadlineBlock
from ._proxy import Proxy

__all__ = ["gather"]

_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
#: Most calls running at once; more wait for a free worker.
MAX_WORKERS = max(64, 8 * (os.cpu_count() or 1))


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = concurrent.futures.ThreadPoolExecutor(MAX_WORKERS, thread_name_prefix="capbridge-gather")
        return _pool


def _channel_of(fn: Any) -> Any:
    """The channel a proxy method (or a proxy) calls through, or None."""
    target = getattr(fn, "func", fn)  # functools.partial
    owner = target if isinstance(target, Proxy) else getattr(target, "__self__", None)
    return owner._cb_chan if isinstance(owner, Proxy) else None


def _run(fn: Callable[..., Any], args: tuple, timeout: float | None) -> Any:
    if timeout is None:
        return fn(*args)
    chan = _channel_of(fn)
    if chan is None:
        return fn(*args)
    with DeadlineBlock(chan, timeout):
        return fn(*args)


def gather(calls: Iterable[Any], *, timeout: float | None = None, return_exceptions: bool = False) -> list:
    """Run ``calls`` at once and return their results, in order.

    ``capbridge.gather([(npc.tick, state) for npc in npcs], timeout=0.005)``

    :param calls: each a callable, or a tuple ``(callable, *args)``; typically a proxy
        method of a different sandbox each (several into one sandbox work too).
    :param timeout: a deadline in seconds for each call into a sandbox, as
        ``Sandbox.deadline`` sets it: a call still running is interrupted
        (:class:`CallTimeout`, the sandbox lives on) or, if it does not stop, its
        sandbox is killed (:class:`SandboxTimeout`).
    :param return_exceptions: put a failed call's exception in its place in the list
        instead of raising the first one (after all calls have ended).
    """
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or timeout <= 0):
        raise ValueError(f"timeout must be a positive number of seconds or None, not {timeout!r}")
    jobs: list[tuple[Callable[..., Any], tuple]] = []
    for call in calls:
        if isinstance(call, tuple):
            if not call or not callable(call[0]):
                raise TypeError("gather() takes callables or (callable, *args) tuples")
            jobs.append((call[0], call[1:]))
        elif callable(call):
            jobs.append((call, ()))
        else:
            raise TypeError(f"gather() takes callables or (callable, *args) tuples, not {type(call).__name__}")
    if not jobs:
        return []
    if len(jobs) == 1:
        futures = None
        try:
            results: list = [_run(jobs[0][0], jobs[0][1], timeout)]
        except BaseException as exc:
            if not return_exceptions or not isinstance(exc, Exception):
                raise
            results = [exc]
        return results
    pool = _executor()
    futures = [pool.submit(_run, fn, args, timeout) for fn, args in jobs]
    concurrent.futures.wait(futures)
    results = []
    first: BaseException | None = None
    for fut in futures:
        exc = fut.exception()
        if exc is None:
            results.append(fut.result())
        elif return_exceptions:
            results.append(exc)
        elif first is None:
            first = exc
    if first is not None:
        raise first
    return results
