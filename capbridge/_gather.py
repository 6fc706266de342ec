"""``gather``: call many sandboxes at once from one host thread and collect the replies.

Calls through proxies (a proxy's method, or a callable proxy) are multiplexed on the
calling thread: it sends every call, then waits on all the channels at once
(``poll``), serving the callbacks each sandbox makes as they come, while the
sandboxes compute side by side on the machine's cores. No thread is handed anything,
so the cost of a call does not grow with the number of sandboxes. Any other callable
runs on a worker thread of a shared pool meanwhile.
"""

from __future__ import annotations

import concurrent.futures
import os
import select
import threading
import time
from typing import Any, Callable, Iterable

from ._deadline import DeadlineBlock
from ._protocol import Op, Tag
from ._proxy import Proxy, call_parts
from ._tracebacks import trim

__all__ = ["gather"]

_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
#: Most calls on worker threads at once; more wait for a free worker.
MAX_WORKERS = max(64, 8 * (os.cpu_count() or 1))
_CALL = int(Op.CALL)
_CALL_T = int(Tag.CALL)
_POLL_S = 0.05  # how often a wait looks at every call (another thread may have ended one)
_MISSING: Any = object()


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = concurrent.futures.ThreadPoolExecutor(MAX_WORKERS, thread_name_prefix="capbridge-gather")
        return _pool


def _channel_of(fn: Any) -> Any:
    """The channel a proxy method (or a proxy), or a method of a Sandbox
    (``sb.eval``, ``sb.call``, ...), calls through; else None."""
    from ._sandbox import Sandbox

    target = getattr(fn, "func", fn)  # functools.partial
    owner = target if isinstance(target, Proxy) else getattr(target, "__self__", None)
    if isinstance(owner, Proxy):
        return owner._cb_chan
    return owner._chan if isinstance(owner, Sandbox) else None


def _run(fn: Callable[..., Any], args: tuple, timeout: float | None) -> Any:
    if timeout is None:
        return fn(*args)
    chan = _channel_of(fn)
    if chan is None:
        return fn(*args)
    with DeadlineBlock(chan, timeout, source="timeout"):
        return fn(*args)


def _multiplex(calls: list[tuple[int, Proxy, str | None, tuple]], timeout: float | None,
               out: list, errors: list) -> None:
    """Run proxy calls ``(index, proxy, name, args)`` side by side on this thread.

    Only the channels that had something to read are looked at again (epoll), so a
    round over N sandboxes costs O(N), not O(N) per reply. A callback served, or a
    wait that timed out, makes the next look cover every call: another thread (or a
    callback calling a gathered sandbox) may have routed an answer to one.
    """
    live: dict[int, list] = {}  # fd -> [channel, (index, pending), ...]
    poller = select.epoll()
    try:
        for index, proxy, name, args in calls:
            chan = proxy._cb_chan
            try:
                pending = chan.begin(proxy._cb_id, _CALL, name, args, {}, timeout)
            except Exception as exc:
                errors[index] = exc
                continue
            entry = live.get(chan.rfd)
            if entry is None:
                live[chan.rfd] = [chan, (index, pending)]
                poller.register(chan.rfd, select.EPOLLIN)
            else:
                entry.append((index, pending))
        look = list(live)
        while live:
            sweep = False
            for fd in look:
                entry = live.get(fd)
                if entry is None:
                    continue
                chan = entry[0]
                top = chan._top
                k = 1
                while k < len(entry):
                    index, pending = entry[k]
                    inbox = pending.inbox
                    if not inbox and not top and chan._dead is None:
                        k += 1
                        continue
                    if len(inbox) == 1 and inbox[0][0] != _CALL_T and not top:
                        pending.reply = inbox.pop()  # the common case: just the answer
                        done = True
                    else:
                        try:
                            done = chan.step(pending)
                        except Exception:
                            done = True  # the channel failed while serving: end() raises why
                        if pending.served:
                            pending.served = 0
                            sweep = True
                    if not done:
                        k += 1
                        continue
                    del entry[k]
                    try:
                        out[index] = chan.end(pending)
                    except Exception as exc:
                        errors[index] = exc
                if len(entry) == 1:
                    del live[fd]
                    try:
                        poller.unregister(fd)
                    except OSError:
                        pass  # closed meanwhile (Sandbox.close on another thread): epoll dropped it
            if not live:
                break
            try:
                events = poller.poll(_POLL_S)
            except InterruptedError:
                events = []
            look = [fd for fd, _ in events]
            for fd in look:
                if not live[fd][0].read_ready():  # another thread reads it, and routes to us
                    time.sleep(0.0002)
            if sweep or not events:
                look = list(live)
    finally:
        poller.close()
        for entry in live.values():  # only after an exception out of here (KeyboardInterrupt)
            for _index, pending in entry[1:]:
                try:
                    entry[0].give_up(pending)
                except BaseException:
                    pass


def gather(calls: Iterable[Any], *, timeout: float | None = None, return_exceptions: bool = False) -> list:
    """Run ``calls`` at once and return their results, in order.

    ``capbridge.gather([(npc.tick, state) for npc in npcs], timeout=0.005)``

    :param calls: each a callable, or a tuple ``(callable, *args)``; typically a proxy
        method of a different sandbox each (several into one sandbox work too).
    :param timeout: a deadline in seconds for each call into a sandbox (a proxy
        call, or a method of a :class:`Sandbox` such as ``sb.eval``), as
        ``Sandbox.deadline`` sets it: a call still running is interrupted
        (:class:`CallTimeout`, the sandbox lives on) or, if it does not stop, its
        sandbox is killed (:class:`SandboxTimeout`).
    :param return_exceptions: put a failed call's exception in its place in the list
        instead of raising the first one (after all calls have ended).
    """
    try:
        if not isinstance(calls, (list, tuple)):
            calls = list(calls)
        out = _gather(calls, timeout, return_exceptions)
    except BaseException as exc:
        trim(exc, _any_debug(calls))
        raise
    if return_exceptions:
        debug = None
        for result in out:
            if isinstance(result, BaseException):
                if debug is None:
                    debug = _any_debug(calls)
                trim(result, debug)
    return out


def _any_debug(calls: Any) -> bool:
    """Whether a proxy among ``calls`` belongs to a ``debug=True`` sandbox."""
    try:
        for call in calls:
            chan = _channel_of(call[0] if isinstance(call, tuple) and call else call)
            if chan is not None and chan.session.debug:
                return True
    except Exception:
        pass
    return False


def _gather(calls: Iterable[Any], timeout: float | None, return_exceptions: bool) -> list:
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
        try:
            results: list = [_run(jobs[0][0], jobs[0][1], timeout)]
        except Exception as exc:
            if not return_exceptions:
                raise
            results = [exc]
        return results
    out: list = [_MISSING] * len(jobs)
    errors: list = [None] * len(jobs)
    direct: list = []
    threaded: list = []
    for index, (fn, args) in enumerate(jobs):
        parts = call_parts(fn)
        if parts is None:
            threaded.append(index)
        else:
            direct.append((index, parts[0], parts[1], args))
    futures = [(index, _executor().submit(_run, jobs[index][0], jobs[index][1], timeout)) for index in threaded]
    try:
        _multiplex(direct, timeout, out, errors)
    finally:
        for index, fut in futures:
            concurrent.futures.wait([fut])
            exc = fut.exception()
            if exc is None:
                out[index] = fut.result()
            else:
                errors[index] = exc
    for index, exc in enumerate(errors):
        if exc is not None:
            if not return_exceptions or not isinstance(exc, Exception):
                raise exc
            out[index] = exc
    return out
