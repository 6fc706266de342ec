"""What both ends of a connection share, without I/O.

A connection end is a *session*: it turns outgoing messages into bodies, incoming
bodies into messages, and runs incoming calls against its exports. The two ends trust
their peer differently, so each is its own class over this shared base:
:class:`~capbridge._host_session.HostSession` distrusts the sandbox (checked decoder,
exposure rules, membranes) and :class:`~capbridge._sandbox_session.SandboxSession`
trusts the host. The thin I/O layer (:mod:`capbridge._channel`) moves the bodies.

Shared here: the tables (exports with their interface keys, imports, the proxy
classes of the peer's interfaces, questions, answers), releases, batched iteration
and the counters.
"""

from __future__ import annotations

import itertools
import weakref
TYPE_CHECKING = False
if TYPE_CHECKING:  # (typing is not imported at run time: it costs start-up)
    from typing import Any

from ._errors import ProtocolError
from ._expose import Interface, Member
from ._protocol import ANSWER_HEADER, CALL_HEADER, Tag
from ._proxy import ITER_BATCH, InterfaceDesc, Proxy, build_proxy_class, new_proxy
from ._tables import FORGET, Tables

__all__ = ["Session", "IterBatches", "ITER_IFACE", "MAX_INTERFACES"]

_CALL_T, _RETURN_T, _RAISE_T, _RELEASE_T = int(Tag.CALL), int(Tag.RETURN), int(Tag.RAISE), int(Tag.RELEASE)
_pack_call = CALL_HEADER.pack
_pack_answer = ANSWER_HEADER.pack
_RELEASE_BYTE = bytes((_RELEASE_T,))

#: Interfaces of one peer in use at once on a connection (each becomes a class).
MAX_INTERFACES = 4096


class IterBatches:
    """An iterator being walked in batches by the peer."""

    __slots__ = ("it", "__weakref__")

    def __init__(self, it: Any) -> None:
        self.it = it

    def next_batch(self, n: int) -> tuple[list, bool]:
        n = max(1, min(int(n), ITER_BATCH * 16))
        batch = list(itertools.islice(self.it, n))
        return batch, len(batch) == n

    def _cb_wrapper_interface(self) -> Interface:
        return ITER_IFACE


ITER_IFACE = Interface(
    name="iterator", doc="", methods={"next_batch": Member("", "(n)")}, properties={}, dunders={}
)


def start_iter(it: Any) -> tuple:
    """The answer to an ITER op: the first batch, and the rest to fetch (or None)."""
    first = list(itertools.islice(it, ITER_BATCH))
    if len(first) < ITER_BATCH:
        return (first, None)
    return (first, IterBatches(it))


def header(msg: tuple) -> bytes:
    """The binary header of ``msg`` (see :mod:`capbridge._protocol`)."""
    tag = msg[0]
    if tag == _RETURN_T or tag == _RAISE_T:
        return _pack_answer(tag, msg[1])
    if tag == _CALL_T:
        return _pack_call(tag, msg[1], msg[2], msg[3], msg[4])
    return _RELEASE_BYTE


def payload_of(msg: tuple) -> Any:
    """The part of ``msg`` that is pickled after the header."""
    tag = msg[0]
    if tag == _CALL_T:
        return (msg[5], msg[6], msg[7])
    return msg[-1]


class Session:
    """Tables, interface keys, peer classes and counters of one connection end."""

    #: True on the sandbox's end: descriptors come from the trusted host.
    trusted_peer = False

    def __init__(self, *, max_frame: int = 64 * 1024 * 1024, debug: bool = False) -> None:
        self.max_frame = max_frame
        self.debug = debug
        self.tables = Tables()
        self._export_of = self.tables.exports.lookup
        self.channel: Any = None  # the I/O layer proxies call through
        self.calls_in = 0
        self.bytes_in = 0
        self.bytes_out = 0

    # ------------------------------------------------------------------ our exports

    def interface_key(self, iface: Interface, pending: list[int] | None) -> tuple[int, bool]:
        """The key of ``iface`` (an export of it was just made) and whether the peer
        needs its descriptor (not sent yet, nor queued in ``pending`` for this body)."""
        return self.tables.exports.describe(iface, pending)

    def interfaces_sent(self, keys: list[int]) -> None:
        self.tables.exports.mark_sent(keys)

    # ------------------------------------------------------------------ the peer's exports

    def _check_descriptor(self, desc: Any) -> None:
        """Hook: the host validates descriptors from the sandbox."""

    def import_ref(self, eid: int, key: int, desc: Any) -> Proxy:
        """The proxy for the peer's export ``eid`` of interface ``key``."""
        classes = self.tables.peer_classes
        cls = classes.get(key)
        if desc is not None:
            if cls is not None:
                raise ProtocolError(f"interface {key} described twice")
            if len(classes) >= MAX_INTERFACES:
                raise ProtocolError(f"more than {MAX_INTERFACES} interfaces in use on one connection")
            self._check_descriptor(desc)
            cls = build_proxy_class(InterfaceDesc(desc), trusted=self.trusted_peer)
            classes[key] = cls
        elif cls is None:
            raise ProtocolError(f"reference to undescribed interface {key}")
        chan = self.channel
        return self.tables.imports.receive(eid, lambda entry: _make(cls, chan, entry))

    def proxy_dropped(self, entry: Any) -> None:
        self.tables.imports.dropped(entry)

    def take_releases(self) -> tuple:
        return self.tables.imports.take_releases()

    def handle_release(self, pairs: tuple) -> None:
        exports = self.tables.exports
        for eid, count in pairs:
            if eid == FORGET:  # the peer forgot interface key ``count``: so do we
                self.tables.peer_classes.pop(count, None)
            elif not exports.release(eid, count):
                self._bad_release(eid, count)

    def _bad_release(self, eid: int, count: int) -> None:
        """Hook: a release of an id we do not have (ignored unless overridden)."""

    # ------------------------------------------------------------------ the channel's hooks

    def begin_answer(self) -> None:
        return None

    def end_answer(self, saved: Any) -> None:
        return None

    def connection_lost(self) -> None:
        """The channel is dead: let go of everything the peer could reach or send."""
        self.tables.clear()

    def stats(self) -> dict[str, int]:
        return self.tables.stats()


def _make(cls: type, chan: Any, entry: Any) -> Proxy:
    p = new_proxy(cls, chan, entry)
    entry.proxy = weakref.ref(p)
    return p
