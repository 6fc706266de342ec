"""``Logger``: sandbox logging into the host's :mod:`logging`, size-capped and rate-limited."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from capbridge import expose

__all__ = ["Logger"]

_LEVELS = {
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARNING": logging.WARNING,
    "WARN": logging.WARNING,
    "ERROR": logging.ERROR,
    "CRITICAL": logging.CRITICAL,
}
_ESCAPES = {i: f"\\x{i:02x}" for i in range(32) if i != 9}
_ESCAPES.update({10: "\\n", 13: "\\r", 127: "\\x7f"})


class Logger:
    """A log the sandbox writes to, recorded by the host logger ``name``.

    Messages are text: other values are ``repr``-ed, control characters (newlines
    included) are escaped so one call makes one log line, and anything longer than
    ``max_message_bytes`` (UTF-8) is cut with a note. At most ``rate`` messages per
    second pass (a token bucket holding ``burst``, default ``rate``); the rest are
    dropped and counted, and the next message that passes is preceded by one WARNING
    line saying how many were dropped. ``rate=None`` lifts the limit. ``min_level``
    drops records below it before they cost anything. Each call returns True if the
    message was recorded, False if it was dropped or its level is not enabled.
    """

    def __init__(
        self,
        name: str = "capbridge.sandbox",
        *,
        max_message_bytes: int = 4096,
        rate: float | None = 10.0,
        burst: int | None = None,
        min_level: int = logging.DEBUG,
    ) -> None:
        if not isinstance(max_message_bytes, int) or max_message_bytes < 16:
            raise ValueError("max_message_bytes must be an int >= 16")
        if rate is not None and not (isinstance(rate, (int, float)) and rate > 0):
            raise ValueError("rate must be a positive number or None")
        self.name = name
        self.max_message_bytes = max_message_bytes
        self.rate = rate
        self.burst = float(burst if burst is not None else max(1.0, rate or 1.0))
        self.min_level = min_level
        self._logger = logging.getLogger(name)
        self._tokens = self.burst
        self._clock = time.monotonic
        self._last = self._clock()
        self._pending_drops = 0
        self._dropped = 0
        self._lock = threading.Lock()

    def _clean(self, msg: Any) -> str:
        text = msg if isinstance(msg, str) else repr(msg)
        text = text.translate(_ESCAPES)
        raw = text.encode("utf-8", "backslashreplace")
        if len(raw) > self.max_message_bytes:
            cut = raw[: self.max_message_bytes].decode("utf-8", "ignore")
            text = f"{cut}... [{len(raw) - self.max_message_bytes} bytes cut]"
        return text

    def _admit(self) -> int | None:
        """Take a token; returns the drops to report first, or None if this one drops."""
        with self._lock:
            if self.rate is not None:
                now = self._clock()
                self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
                self._last = now
                if self._tokens < 1.0:
                    self._pending_drops += 1
                    self._dropped += 1
                    return None
                self._tokens -= 1.0
            drops, self._pending_drops = self._pending_drops, 0
            return drops

    def _emit(self, level: int, msg: Any) -> bool:
        if level < self.min_level or not self._logger.isEnabledFor(level):
            return False
        drops = self._admit()
        if drops is None:
            return False
        if drops:
            self._summary(drops)
        self._logger.log(level, "%s", self._clean(msg))
        return True

    def _summary(self, drops: int) -> None:
        self._logger.warning("sandbox logger %r dropped %d message(s) (rate limit)", self.name, drops)

    def flush(self) -> None:
        """Host-side: log the drop summary now if messages were dropped since the last one."""
        with self._lock:
            drops, self._pending_drops = self._pending_drops, 0
        if drops:
            self._summary(drops)

    @expose
    @property
    def dropped(self) -> int:
        """Messages dropped by the rate limit so far."""
        return self._dropped

    @expose
    def log(self, level: int | str, msg: Any) -> bool:
        """Log ``msg`` at ``level`` (a number or a name like ``"INFO"``); False if not recorded."""
        if isinstance(level, str):
            try:
                lvl = _LEVELS[level.upper()]
            except KeyError:
                raise ValueError(f"unknown level {level!r}") from None
        elif isinstance(level, int) and not isinstance(level, bool):
            lvl = min(max(level, logging.DEBUG), logging.CRITICAL)
        else:
            raise TypeError("level must be an int or a level name")
        return self._emit(lvl, msg)

    @expose
    def debug(self, msg: Any) -> bool:
        """Log at DEBUG."""
        return self._emit(logging.DEBUG, msg)

    @expose
    def info(self, msg: Any) -> bool:
        """Log at INFO."""
        return self._emit(logging.INFO, msg)

    @expose
    def warning(self, msg: Any) -> bool:
        """Log at WARNING."""
        return self._emit(logging.WARNING, msg)

    @expose
    def error(self, msg: Any) -> bool:
        """Log at ERROR."""
        return self._emit(logging.ERROR, msg)

    @expose
    def critical(self, msg: Any) -> bool:
        """Log at CRITICAL."""
        return self._emit(logging.CRITICAL, msg)
