"""One thread that watches the deadlines of every watched channel.

A channel records, per question id, when the watchdog must look at that call in
``channel.deadlines`` (a dict store, no lock). The thread sleeps until the earliest
time it knows of, then calls ``channel.on_deadline(qid)`` for each one due, which
decides what happens (see :mod:`capbridge._deadline`) and may store a new time.
A deadline that moved forward costs one extra wake-up per wall period, not a lock
per call. Only a deadline earlier than the planned wake-up (the first call after
idling, a short timeout) pokes the thread. The callbacks never block.
"""

from __future__ import annotations

import threading
import time
import weakref
TYPE_CHECKING = False
if TYPE_CHECKING:  # (typing is not imported at run time: it costs start-up)
    from typing import Any

__all__ = ["watch", "unwatch", "poke", "next_wake", "start"]

_cond = threading.Condition(threading.Lock())
_watched: "weakref.WeakSet[Any]" = weakref.WeakSet()
_thread: threading.Thread | None = None
_INF = float("inf")
#: When the watchdog next wakes (read without a lock by callers: a stale value only
#: causes a spare poke or a late look, never a missed deadline).
next_wake = _INF


def _run() -> None:
    global next_wake
    while True:
        due = []
        with _cond:
            now = time.monotonic()
            soonest = _INF
            for chan in list(_watched):
                for qid, deadline in list(chan.deadlines.items()):
                    if deadline <= now:
                        chan.deadlines.pop(qid, None)
                        due.append((chan, qid))
                    elif deadline < soonest:
                        soonest = deadline
            chan = None  # a sleeping watchdog must not keep the last channel alive
            if not due:
                next_wake = soonest
                _cond.wait(None if soonest == _INF else soonest - now)
                continue
            next_wake = now
        for chan, qid in due:
            fire = chan.on_deadline
            if fire is not None:
                try:
                    fire(qid)
                except Exception:  # pragma: no cover - must not stop the thread
                    pass
        chan = fire = due = None  # type: ignore[assignment]


def watch(chan: Any) -> None:
    """Enforce ``chan.deadlines`` from now on."""
    with _cond:
        _watched.add(chan)
        _start()


def start() -> None:
    """Start the thread now (the first :func:`watch` does otherwise)."""
    with _cond:
        _start()


def _start() -> None:  # caller holds _cond
    global _thread
    if _thread is None or not _thread.is_alive():
        _thread = threading.Thread(target=_run, name="capbridge-watchdog", daemon=True)
        _thread.start()


def unwatch(chan: Any) -> None:
    with _cond:
        _watched.discard(chan)


def poke() -> None:
    """Wake the watchdog to look at a deadline earlier than it planned for."""
    global next_wake
    with _cond:
        next_wake = 0.0
        _cond.notify()
