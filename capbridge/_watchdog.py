"""One thread that fires deadlines (the wall-clock limit of sandbox calls)."""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from typing import Callable

__all__ = ["arm", "disarm"]

_lock = threading.Condition(threading.Lock())
_heap: list[tuple[float, int, Callable[[], None]]] = []
_cancelled: set[int] = set()
_seq = itertools.count(1)
_thread: threading.Thread | None = None


def _run() -> None:
    while True:
        with _lock:
            while True:
                while _heap and _heap[0][1] in _cancelled:
                    _cancelled.discard(heapq.heappop(_heap)[1])
                if not _heap:
                    _lock.wait()
                    continue
                delay = _heap[0][0] - time.monotonic()
                if delay <= 0:
                    _, token, fire = heapq.heappop(_heap)
                    break
                _lock.wait(delay)
        try:
            fire()
        except Exception:  # pragma: no cover - a deadline callback must not kill the thread
            pass


def arm(deadline: float, fire: Callable[[], None]) -> int:
    """Call ``fire()`` at ``deadline`` (time.monotonic) unless disarmed first."""
    global _thread
    token = next(_seq)
    with _lock:
        if _thread is None:
            _thread = threading.Thread(target=_run, name="capbridge-watchdog", daemon=True)
            _thread.start()
        first = not _heap or deadline < _heap[0][0]
        heapq.heappush(_heap, (deadline, token, fire))
        if first:
            _lock.notify()
    return token


def disarm(token: int) -> None:
    with _lock:
        _cancelled.add(token)
        if len(_cancelled) > 1024:
            live = {t for _, t, _ in _heap}
            _cancelled.intersection_update(live)
