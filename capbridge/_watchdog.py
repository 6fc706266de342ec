"""One thread that fires deadlines (the wall-clock limit of sandbox calls).

Arming and disarming are O(1) dict operations; the thread only wakes at the
earliest deadline it knows of, so a busy host pays almost nothing per call.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Callable

__all__ = ["arm", "disarm"]

_cond = threading.Condition(threading.Lock())
_active: dict[int, tuple[float, Callable[[], None]]] = {}
_seq = itertools.count(1)
_next_wake = float("inf")
_thread: threading.Thread | None = None


def _run() -> None:
    global _next_wake
    while True:
        due: list[Callable[[], None]] = []
        with _cond:
            now = time.monotonic()
            soonest = float("inf")
            for token, (deadline, fire) in list(_active.items()):
                if deadline <= now:
                    del _active[token]
                    due.append(fire)
                elif deadline < soonest:
                    soonest = deadline
            if not due:
                _next_wake = soonest
                _cond.wait(None if soonest == float("inf") else soonest - now)
                continue
        for fire in due:
            try:
                fire()
            except Exception:  # pragma: no cover - a callback must not stop the thread
                pass


def arm(deadline: float, fire: Callable[[], None]) -> int:
    """Call ``fire()`` (on the watchdog thread) at ``deadline`` unless disarmed first."""
    global _thread, _next_wake
    token = next(_seq)
    with _cond:
        _active[token] = (deadline, fire)
        if _thread is None:
            _thread = threading.Thread(target=_run, name="capbridge-watchdog", daemon=True)
            _thread.start()
        if deadline < _next_wake:
            _next_wake = deadline
            _cond.notify()
    return token


def disarm(token: int) -> None:
    """Cancel a deadline (no effect if it already fired)."""
    _active.pop(token, None)
