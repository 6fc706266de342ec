"""The capability tables of one connection end, in one place.

* **exports** - our objects the peer holds references to, by export id. One id per
  object (a reverse map by identity); a count of references sent, lowered by the
  peer's counted releases, so a release racing a new reference can't drop a live
  object. Ids are never reused. Each export names the *interface key* its
  descriptor travels under. A key no export uses is kept a while (the
  :data:`MAX_IDLE_KEYS` used last, until the table is empty), so an object handed
  out and dropped in a loop is described once; when a key goes, the peer is told
  to forget it. Keys are never reused.
* **imports** - the peer's exports we hold proxies for: id -> entry with the number
  of references received, returned in one release when the proxy dies.
* **peer classes** - the proxy classes built from the peer's interface
  descriptors, by the peer's key, until the peer says to forget one.
* **questions** - calls we sent and still wait for, by question id.
* **answers** - calls from the peer we are serving, by the peer's question id.

Releases and forgotten keys leave in one queue of pairs: ``(export id, count)``,
and ``(0, key)`` for a key (no export has id 0).
"""

from __future__ import annotations

import itertools
import threading
TYPE_CHECKING = False
if TYPE_CHECKING:  # (typing is not imported at run time: it costs start-up)
    from typing import Any, Callable

from ._expose import Interface

__all__ = ["Export", "ExportTable", "ImportEntry", "ImportTable", "Tables", "FORGET", "MAX_IDLE_KEYS"]

#: The id in a release pair that means "forget interface key <count>".
FORGET = 0
#: Interface keys kept while no export uses them (the most recently used).
MAX_IDLE_KEYS = 64


class Export:
    """One of our objects the peer can reach.

    ``obj`` is what was exported: a plain capability (then ``target`` is the same
    object), or a membrane wrapper (then ``membrane`` is its membrane and ``target``
    is None: the wrapper holds the target until it is revoked). ``key`` is the key
    of ``iface`` on this connection.
    """

    __slots__ = ("id", "obj", "target", "iface", "membrane", "count", "key")

    def __init__(self, eid: int, obj: Any, target: Any, iface: Interface | None, membrane: Any) -> None:
        self.id = eid
        self.obj = obj
        self.target = target
        self.iface = iface
        self.membrane = membrane
        self.count = 0
        self.key = 0


class ExportTable:
    """Exports by id and by object, and the interface keys they use."""

    __slots__ = ("_by_id", "_by_obj", "_next", "_lock", "_keys", "_idle", "_live", "_next_key", "_sent",
                 "_out", "lookup")

    def __init__(self, out: list | None = None) -> None:
        self._by_id: dict[int, Export] = {}
        #: :meth:`get` without its frame, for the dispatch path.
        self.lookup = self._by_id.get
        self._by_obj: dict[int, Export] = {}
        self._next = 1
        self._lock = threading.Lock()
        #: interface -> [key, number of exports using it]
        self._keys: dict[Interface, list[int]] = {}
        self._idle: dict[Interface, None] = {}  # keys no export uses, oldest first
        self._live: set[int] = set()  # the keys in _keys
        self._next_key = 1
        self._sent: set[int] = set()  # keys whose descriptor the peer has
        self._out = out if out is not None else []  # (FORGET, key) pairs for the peer

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
                if iface is not None:
                    entry.key = self._use(iface)
            entry.count += 1
            return entry

    def _use(self, iface: Interface) -> int:
        used = self._keys.get(iface)
        if used is None:
            used = self._keys[iface] = [self._next_key, 0]
            self._live.add(self._next_key)
            self._next_key += 1
        elif not used[1]:
            del self._idle[iface]
        used[1] += 1
        return used[0]

    def describe(self, iface: Interface, pending: list[int] | None) -> tuple[int, bool]:
        """The key of ``iface`` (which an export uses) and whether the peer needs its
        descriptor: it has not been sent, nor queued in ``pending`` for this body."""
        with self._lock:
            used = self._keys.get(iface)
            if used is None:  # every export of it was released meanwhile (a lying peer)
                key = self._next_key
                self._next_key += 1
                return key, True
            key = used[0]
            if key in self._sent or (pending is not None and key in pending):
                return key, False
        if pending is not None:
            pending.append(key)
        return key, True

    def mark_sent(self, keys: list[int]) -> None:
        """The descriptors of ``keys`` are on their way to the peer."""
        if keys:
            with self._lock:
                self._sent.update(k for k in keys if k in self._live)

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
                self._unuse(entry.iface)
            return True

    def _unuse(self, iface: Interface | None) -> None:
        used = self._keys.get(iface) if iface is not None else None
        if used is None:
            return
        used[1] -= 1
        if used[1]:
            return
        self._idle[iface] = None  # type: ignore[index]
        if used[0] not in self._sent:  # the peer never learnt it (a body not sent)
            self._forget(iface)  # type: ignore[arg-type]
            return
        if not self._by_id:  # nothing exported: nothing to keep
            for idle in list(self._idle):
                self._forget(idle)
        elif len(self._idle) > MAX_IDLE_KEYS:
            self._forget(next(iter(self._idle)))

    def _forget(self, iface: Interface) -> None:
        key = self._keys.pop(iface)[0]
        del self._idle[iface]
        self._live.discard(key)
        if key in self._sent:
            self._sent.discard(key)
            self._out.append((FORGET, key))

    def clear(self) -> None:
        with self._lock:
            self._by_id.clear()
            self._by_obj.clear()
            self._keys.clear()
            self._idle.clear()
            self._live.clear()
            self._sent.clear()

    def interfaces(self) -> int:
        """How many interface keys this end holds (in use or kept)."""
        return len(self._keys)

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

    def __init__(self, out: list | None = None) -> None:
        self._by_id: dict[int, ImportEntry] = {}
        self._lock = threading.Lock()
        #: (id, count) pairs waiting to be sent (see the module docstring).
        self.pending_releases: list[tuple[int, int]] = out if out is not None else []

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
    """Exports, imports, peer classes, questions and answers of one connection end."""

    __slots__ = ("exports", "imports", "peer_classes", "questions", "answers", "next_qid")

    def __init__(self) -> None:
        out: list[tuple[int, int]] = []  # releases and forgotten keys share one queue
        self.exports = ExportTable(out)
        self.imports = ImportTable(out)
        self.peer_classes: dict[int, type] = {}
        self.questions: dict[int, Any] = {}
        self.answers: dict[int, Any] = {}
        #: Question ids: ``next()`` on a count is atomic under the GIL.
        self.next_qid = itertools.count(1).__next__

    def clear(self) -> None:
        """The connection is over: drop every export, import and peer class."""
        self.exports.clear()
        self.imports.clear()
        self.peer_classes.clear()

    def stats(self) -> dict[str, int]:
        return {
            "exports": len(self.exports),
            "imports": len(self.imports),
            "questions": len(self.questions),
            "answers": len(self.answers),
            "interfaces": self.exports.interfaces(),
            "peer_interfaces": len(self.peer_classes),
        }
