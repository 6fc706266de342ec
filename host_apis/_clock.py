"""``Clock``: wall and monotonic time, and sleeps bounded per call and in total."""

from __future__ import annotations

import datetime as _dt
import math
import threading
import time

from capbridge import expose

__all__ = ["Clock"]


class Clock:
    """Time for the sandbox.

    ``max_sleep`` bounds one :meth:`sleep` (longer requests raise ``ValueError``);
    ``max_total_sleep`` bounds all sleeps together (then ``PermissionError``); ``None``
    lifts a bound. ``resolution`` (seconds) rounds the times handed out down to a
    multiple of itself, to blunt timing side channels. A sleep blocks the host thread
    serving the call.
    """

    def __init__(
        self,
        *,
        max_sleep: float | None = 1.0,
        max_total_sleep: float | None = 60.0,
        resolution: float | None = None,
    ) -> None:
        for name, value in (
            ("max_sleep", max_sleep),
            ("max_total_sleep", max_total_sleep),
            ("resolution", resolution),
        ):
            if value is not None and not (isinstance(value, (int, float)) and value >= 0):
                raise ValueError(f"{name} must be a non-negative number or None")
        self.max_sleep = max_sleep
        self.max_total_sleep = max_total_sleep
        self.resolution = resolution or None
        self._slept = 0.0
        self._lock = threading.Lock()

    def _round(self, t: float) -> float:
        if self.resolution is None:
            return t
        return math.floor(t / self.resolution) * self.resolution

    @expose
    def time(self) -> float:
        """Seconds since the epoch, like :func:`time.time`."""
        return self._round(time.time())

    @expose
    def monotonic(self) -> float:
        """A clock that never goes back, like :func:`time.monotonic`."""
        return self._round(time.monotonic())

    @expose
    def now(self) -> _dt.datetime:
        """The current UTC time as an aware :class:`datetime.datetime`."""
        return _dt.datetime.fromtimestamp(self.time(), _dt.timezone.utc)

    @expose
    def sleep(self, seconds: float) -> None:
        """Sleep ``seconds``, within the per-call and total bounds."""
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise TypeError("sleep() takes a number of seconds")
        seconds = float(seconds)
        if math.isnan(seconds) or seconds < 0:
            raise ValueError("sleep length must be a non-negative number")
        if self.max_sleep is not None and seconds > self.max_sleep:
            raise ValueError(f"sleep length {seconds} exceeds the limit of {self.max_sleep} s per call")
        with self._lock:
            if self.max_total_sleep is not None and self._slept + seconds > self.max_total_sleep:
                raise PermissionError(
                    f"sleep budget exhausted: {self._slept:.3f} of {self.max_total_sleep} s used"
                )
            self._slept += seconds
        time.sleep(seconds)

    @expose
    def sleep_remaining(self) -> float | None:
        """Seconds of sleep left in the total budget (``None``: unbounded)."""
        if self.max_total_sleep is None:
            return None
        with self._lock:
            return max(0.0, self.max_total_sleep - self._slept)
