"""The four capability tables of one connection end, in one place.

* **exports** - our objects the peer holds references to, by export id. One id per
  object (a reverse map by identity); a count of references sent, lowered by the
  peer's counted releases, so a release racing a new reference can't drop a live
  object. Ids are never reused.
* **imports** - the peer's exports we hold proxies for: id -> entry with the number
  of references received, returned in one release when the proxy dies.
* **questions** - calls we sent and still wait for, by question id.
* **answers** - calls from the peer we are serving, by the peer's question id.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any, Callable

from ._expose import Interface

__all__ = ["Export", "ExportTable", "ImportEntry", "ImportTable", "Tables"]


class Export:
    """One of our objects the peer can reach.

    ``obj`` is what was exported: a plain capability (then ``target`` is the same
    object), or a membrane wrapper (then ``membrane`` is its membrane and ``target``
    is None: the wrapper holds the target until it is revoked).
    """

    __slots__ = ("id", "obj", "target", "iface", "membrane", "count")

    def __init__(self, eid: int, obj: Any, target: Any, iface: Interface | None, membrane: Any) -> None:
        self.id = eid
        self.obj = obj
        self.target = target
        self.iface = iface
        self.membrane = membrane
        self.count = 0

    @property
    def revoked(self) -> bool:
        m = self.membrane
        return m is not None and (m.revoked or self.obj._cb_raw is None)


class ExportTable:
    __slots__ = ("_by_id", "_by_obj", "_next", "_lock")

    def __init__(self) -> None:
        self._by_id: dict[int, Export] = {}
        self._by_obj: dict[int, Export] = {}
        self._next = 1
        self._lock = threading.Lock()

    def export(self, obj: Any, target: Any, iface: Interface | None, membrane: Any = None) -> Export:
        """Count one more reference to ``obj`` sent to the peer; returns its entry.

        One entry per object: the same object exported again gets the same id. A
        membrane wrapper is its own object, so one target reached through two
        membranes has two entries.
        """
        with self._lock:
            entry = self._by_obj.get(id(obj))
            if entry is None or entry.obj is not obj:
                entry = Export(self._next, obj, target, iface, membrane)
                self._next += 1
                self._by_id[entry.id] = entry
                self._by_obj[id(obj)] = entry
            entry.count += 1
            return entry

    def get(self, eid: int) -> Export | None:
        return self._by_id.get(eid)

    def release(self, eid: int, count: int) -> bool:
        """Drop ``count`` references; False if the id is unknown or over-released."""
        with self._lock:
            entry = self._by_id.get(eid)
            if entry is None or count > entry.count:
                return False
            entry.count -= count
            if entry.count == 0:
                del self._by_id[eid]
                if self._by_obj.get(id(entry.obj)) is entry:
                    del self._by_obj[id(entry.obj)]
            return True

    def clear(self) -> None:
        with self._lock:
            self._by_id.clear()
            self._by_obj.clear()

    def __len__(self) -> int:
        return len(self._by_id)


class ImportEntry:
    __slots__ = ("id", "proxy", "count")

    def __init__(self, iid: int) -> None:
        self.id = iid
        self.proxy: Any = None  # a weak reference to the proxy
        self.count = 0


class ImportTable:
    __slots__ = ("_by_id", "_lock", "pending_releases")

    def __init__(self) -> None:
        self._by_id: dict[int, ImportEntry] = {}
        self._lock = threading.Lock()
        #: (id, count) pairs waiting to be sent; appended by finalizers only.
        self.pending_releases: list[tuple[int, int]] = []

    def receive(self, iid: int, make_proxy: Callable[[ImportEntry], Any]) -> Any:
        """One more reference to peer export ``iid`` arrived: the proxy for it."""
        with self._lock:
            entry = self._by_id.get(iid)
            proxy = entry.proxy() if entry is not None else None
            if proxy is None:
                entry = ImportEntry(iid)
                proxy = make_proxy(entry)
                self._by_id[iid] = entry
            entry.count += 1
            return proxy

    def dropped(self, entry: ImportEntry) -> None:
        """A proxy died: queue the release of every reference it stood for.

        Called from finalizers, so it only queues; the transport sends.
        """
        if self._by_id.get(entry.id) is entry:
            del self._by_id[entry.id]
        if entry.count:
            self.pending_releases.append((entry.id, entry.count))
            entry.count = 0

    def take_releases(self) -> tuple[tuple[int, int], ...]:
        pending = self.pending_releases
        if not pending:
            return ()
        out = []
        while pending:
            try:
                out.append(pending.pop())
            except IndexError:
                break
        return tuple(out)

    def clear(self) -> None:
        with self._lock:
            self._by_id.clear()
            self.pending_releases.clear()

    def __len__(self) -> int:
        return len(self._by_id)


class Tables:
    """Exports, imports, questions and answers of one connection end."""

    __slots__ = ("exports", "imports", "questions", "answers", "next_qid")

    def __init__(self) -> None:
        self.exports = ExportTable()
        self.imports = ImportTable()
        self.questions: dict[int, Any] = {}
        self.answers: dict[int, Any] = {}
        #: Question ids: ``next()`` on a count is atomic under the GIL.
        self.next_qid = itertools.count(1).__next__

    def stats(self) -> dict[str, int]:
        return {
            "exports": len(self.exports),
            "imports": len(self.imports),
            "questions": len(self.questions),
            "answers": len(self.answers),
        }
