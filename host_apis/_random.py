"""``Random``: seedable randomness with bounded sizes."""

from __future__ import annotations

import random as _random
import threading
from typing import Any, Sequence

from capbridge import expose

__all__ = ["Random", "MAX_RANDOM_BYTES"]

#: Most bytes (and bits / 8) one call hands out.
MAX_RANDOM_BYTES = 1024 * 1024


class Random:
    """Random numbers for the sandbox.

    ``Random(seed)`` is deterministic (:class:`random.Random`); ``Random()`` draws from
    the operating system (:class:`random.SystemRandom`). Sequences arrive by value, so
    :meth:`shuffle` returns a shuffled list rather than shuffling in place.
    """

    def __init__(self, seed: int | str | bytes | None = None) -> None:
        if seed is not None and not isinstance(seed, (int, str, bytes)):
            raise TypeError("seed must be int, str, bytes or None")
        self.seeded = seed is not None
        self._rng: _random.Random = _random.Random(seed) if self.seeded else _random.SystemRandom()
        self._lock = threading.Lock()

    @expose
    def random(self) -> float:
        """A float in [0.0, 1.0)."""
        with self._lock:
            return self._rng.random()

    @expose
    def uniform(self, a: float, b: float) -> float:
        """A float between ``a`` and ``b``."""
        with self._lock:
            return self._rng.uniform(a, b)

    @expose
    def randint(self, a: int, b: int) -> int:
        """An int N with a <= N <= b."""
        with self._lock:
            return self._rng.randint(a, b)

    @expose
    def randrange(self, start: int, stop: int | None = None, step: int = 1) -> int:
        """Like :func:`random.randrange`."""
        with self._lock:
            return self._rng.randrange(start, stop, step)

    @expose
    def choice(self, seq: Sequence[Any]) -> Any:
        """One element of the non-empty sequence ``seq``."""
        with self._lock:
            return self._rng.choice(seq)

    @expose
    def sample(self, population: Sequence[Any], k: int) -> list[Any]:
        """``k`` distinct elements of ``population``."""
        with self._lock:
            return self._rng.sample(list(population), k)

    @expose
    def shuffle(self, seq: Sequence[Any]) -> list[Any]:
        """A shuffled copy of ``seq``, as a list."""
        items = list(seq)
        with self._lock:
            self._rng.shuffle(items)
        return items

    @expose
    def getrandbits(self, k: int) -> int:
        """An int with ``k`` random bits (at most 8 Mi bits)."""
        if not isinstance(k, int) or k < 0 or k > MAX_RANDOM_BYTES * 8:
            raise ValueError(f"k must be an int between 0 and {MAX_RANDOM_BYTES * 8}")
        with self._lock:
            return self._rng.getrandbits(k) if k else 0

    @expose
    def bytes(self, n: int) -> bytes:
        """``n`` random bytes (at most 1 MiB per call)."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 0 or n > MAX_RANDOM_BYTES:
            raise ValueError(f"n must be an int between 0 and {MAX_RANDOM_BYTES}")
        with self._lock:
            return self._rng.randbytes(n)
