"""The host's decoder for bodies from the sandbox: exact, iterative and budgeted.

The sandbox writes its bodies with CPython's C pickler in fast mode (protocol 5, no
memo), so a body is a sequence of pickle opcodes. This module is the only code on the
host that reads those bytes, and it builds the objects itself: there is no scan
followed by a call into another unpickler, so nothing here has to model what another
decoder would do. It accepts exactly the opcodes that pickler emits for plain data
(``None``, ``bool``, ``int``, ``float``, ``str``, ``bytes``, ``bytearray``, ``tuple``,
``list``, ``dict``, ``set`` and persistent ids), in exactly the arrangement it emits
them, and refuses everything else, naming it:

* **frames** as the pickler cuts them: a ``FRAME`` of 4 bytes to about 128 KiB, ending
  on an opcode boundary; outside frames only a string, bytes or bytearray of 64 KiB or more
  (the pickler writes those straight through), and at most 3 bytes of other opcodes
  (what is left of a frame too small to be written as one);
* **batches** as the pickler writes them: lists, dicts and sets are filled 1000 items
  at a time (``APPENDS``, ``SETITEMS``, ``ADDITEMS``), a one-item list or dict with
  ``APPEND`` or ``SETITEM``; tuples of 1 to 3 items with ``TUPLE1``-``TUPLE3``, longer
  ones with ``MARK`` ... ``TUPLE``.

Frozensets come as a record (``("v", "frozenset", a_set)``), built here: the C
pickler's fast mode miscounts its nesting on every frozenset it writes.

Cost is part of the attack surface, so the decoder charges a :class:`Budget` as it goes
(not afterwards) and raises :class:`~capbridge.ProtocolError` the moment a message
goes over:

* **nesting depth** - every container on the stack carries its depth, so a deep value
  is refused before anything (hashing, comparison, repr) can recurse into it;
* **host memory** - what each object really occupies (an empty set is 216 bytes, a
  one-item dict 224, rounded up as the allocator does), container growth, and the
  decoder's own stack, against ``ratio`` times the frame size (at least ``floor``),
  capped by ``max_bytes``;
* **work** - value records, references and lone surrogates cost the host far more
  time than their bytes suggest; each is charged what it takes, against ``work_ratio``
  per byte of the frame (at least ``work_floor``);
* **objects created**, **keys** put into dicts and sets, **int size** (bytes of one
  int), **string size** (host memory of one str), and a hook that stops decoding when
  the sandbox has been killed meanwhile (polled at every frame, at least every 128 KiB);
* **hash flooding** - ints, floats, tuples and frozensets hash the same way in every
  process, so a sandbox could send thousands of keys with one hash and make each
  insertion compare against all the others. Every key's hash is counted per container,
  and more than ``max_same_hash`` keys with one full hash is refused; a key holding
  many values (a long tuple, a frozenset) counts as several, and may hold at most
  ``max_key_values`` values, so hashing and comparing keys stays linear.

No single C call works on more than a bounded slice of the body: batches are at most
1000 items, long strings are decoded in pieces, long tuples are built in chunks, and
runs of small numbers and constants are unpacked in batches, so the GIL is released
between steps and other sandboxes' calls go on. The cyclic garbage collector is
paused while a large body decodes (a full collection would walk every container
built so far, in one call), and what a refused decode built is freed in steps.

References (persistent ids) are built as plain tuples and handed to the ``ref``
callback the moment they are complete; it checks them against the connection's own
tables. Opcodes that add items (APPEND, SETITEM, ADDITEMS, ...) only ever act on a
``list``, ``dict`` or ``set`` of exactly that type, which only this decoder makes:
they can never reach a host object.
"""

from __future__ import annotations

import codecs
import gc
import itertools
import threading
from bisect import bisect_left as _bisect
import re
import struct
import sys
TYPE_CHECKING = False
if TYPE_CHECKING:  # (typing is not imported at run time: it costs start-up)
    from typing import Any, Callable

from ._errors import ProtocolError

__all__ = ["Budget", "decode", "small_answer", "small_call", "NOT_SMALL", "MAX_DEPTH", "OPCODES",
           "COMMON_ANSWERS", "SMALL_INT_PAYLOADS", "NONE_PAYLOAD"]

#: Deepest nesting of containers accepted from the sandbox.
MAX_DEPTH = 100

_MIB = 1024 * 1024


class Budget:
    """What decoding one message may cost the host.

    ``ratio`` and ``floor``: decoded objects may take ``ratio`` times the frame's size
    in host memory, and at least ``floor`` bytes; ``max_bytes`` caps that
    (``Limits.max_decoded_mb``). ``work_ratio`` and ``work_floor``: the same for work
    (in nanoseconds of a slow host): value records, references and lone surrogates.
    ``max_objects``: objects created (small ints, one-character strings, ``None`` and
    the booleans are shared and not counted). ``max_keys``: dict and set entries in one
    message. ``max_int_bytes``: the size of one int in bytes (about 2.4 decimal digits
    per byte). ``max_string_bytes``: host memory of one str. ``max_same_hash``: keys of
    one container with the same full hash. ``max_key_values``: values held by one key
    (a tuple's items, all the way down). ``stop``: called at every frame; returns an
    exception to raise when decoding must end (the sandbox was killed meanwhile), else
    None.
    """

    __slots__ = ("ratio", "floor", "max_bytes", "work_ratio", "work_floor", "max_objects", "max_keys",
                 "max_int_bytes", "max_string_bytes", "max_same_hash", "max_key_values", "max_depth",
                 "stop")

    def __init__(self, *, ratio: int = 14, floor: int = 8 * _MIB, max_bytes: int = 512 * _MIB,
                 work_ratio: int = 60, work_floor: int = 20_000_000, max_objects: int = 8_000_000,
                 max_keys: int = 4_000_000, max_int_bytes: int = 8192, max_string_bytes: int = 64 * _MIB,
                 max_same_hash: int = 8, max_key_values: int = 65536, max_depth: int = MAX_DEPTH,
                 stop: Callable[[], BaseException | None] | None = None) -> None:
        self.ratio = ratio
        self.floor = floor
        self.max_bytes = max_bytes
        self.work_ratio = work_ratio
        self.work_floor = work_floor
        self.max_objects = max_objects
        self.max_keys = max_keys
        self.max_int_bytes = max_int_bytes
        self.max_string_bytes = max_string_bytes
        self.max_same_hash = max_same_hash
        self.max_key_values = max_key_values
        self.max_depth = max_depth
        self.stop = stop

    def memory_for(self, frame_size: int) -> int:
        """Bytes of host memory a message of ``frame_size`` bytes may decode into."""
        return min(self.max_bytes, max(self.floor, self.ratio * frame_size))

    def work_for(self, frame_size: int) -> int:
        """Work (nanoseconds of a slow host) decoding a message of ``frame_size`` bytes
        may take in value records, references and lone surrogates."""
        return self.work_floor + self.work_ratio * frame_size


DEFAULT_BUDGET = Budget()

# --------------------------------------------------------------------------- opcodes

# The opcodes the sandbox's pickler emits for plain data, by byte.
_PROTO, _FRAME, _STOP, _MARK = 0x80, 0x95, 0x2E, 0x28
_NONE, _TRUE, _FALSE = 0x4E, 0x88, 0x89
_BININT, _BININT1, _BININT2, _LONG1, _LONG4, _BINFLOAT = 0x4A, 0x4B, 0x4D, 0x8A, 0x8B, 0x47
_SHORT_UNICODE, _UNICODE = 0x8C, 0x58
_SHORT_BYTES, _BYTES, _BYTEARRAY8 = 0x43, 0x42, 0x96
_EMPTY_TUPLE, _TUPLE1, _TUPLE2, _TUPLE3, _TUPLE = 0x29, 0x85, 0x86, 0x87, 0x74
_EMPTY_LIST, _APPEND, _APPENDS = 0x5D, 0x61, 0x65
_EMPTY_DICT, _SETITEM, _SETITEMS = 0x7D, 0x73, 0x75
_EMPTY_SET, _ADDITEMS, _FROZENSET = 0x8F, 0x90, 0x91
_BINPERSID = 0x51

_NAMES: list[str] = []


def _op_name(op: int) -> str:
    """The name of opcode byte ``op``, for error messages (pickletools is imported for
    the first one only: a fresh fork server imports this module before its first sandbox)."""
    if not _NAMES:
        names = ["0x%02x" % b for b in range(256)]
        try:
            import pickletools
        except ImportError:  # pragma: no cover
            pass
        else:
            for info in pickletools.opcodes:
                names[ord(info.code)] = info.name
        _NAMES[:] = names
    return _NAMES[op]

OPCODES = frozenset({
    _PROTO, _FRAME, _STOP, _MARK, _NONE, _TRUE, _FALSE, _BININT, _BININT1, _BININT2, _LONG1,
    _LONG4, _BINFLOAT, _SHORT_UNICODE, _UNICODE, _SHORT_BYTES, _BYTES, _BYTEARRAY8,
    _EMPTY_TUPLE, _TUPLE1, _TUPLE2, _TUPLE3, _TUPLE, _EMPTY_LIST, _APPEND, _APPENDS,
    _EMPTY_DICT, _SETITEM, _SETITEMS, _EMPTY_SET, _ADDITEMS, _BINPERSID,
})

#: What the pickler puts in one frame (it starts a new one past this), and so the
#: size from which it writes a string or bytes outside frames.
FRAME_TARGET = 64 * 1024
#: Longest frame the pickler writes: it starts a new frame before an object once the
#: frame holds the target, so a frame is at most the target, one leaf value (under
#: the target), and the closing opcodes that follow it (a few per level of nesting).
MAX_FRAME = 2 * FRAME_TARGET + 1024
#: Items per APPENDS, SETITEMS (pairs) and ADDITEMS batch.
BATCH = 1000

# Real sizes of what the decoder makes (CPython's, read at import), rounded up to the
# allocator's 16-byte granules.


def _r16(size: int) -> int:
    return (size + 15) & -16


_getsizeof = sys.getsizeof
_SZ_INT = _r16(_getsizeof(1 << 40))  # a 2-digit int: what BININT and BININT2 can make
_SZ_FLOAT = _r16(_getsizeof(1.0))
_SZ_LIST = _r16(_getsizeof([]))
_SZ_DICT = _r16(_getsizeof({}))
_SZ_DICT1 = _r16(_getsizeof({1: 2}))
_SZ_SET = _r16(_getsizeof(set()))
_SZ_TUPLE0 = _getsizeof(())
_SZ_INT0 = _getsizeof(0) - 4  # an int without its 30-bit digits
_SZ_BYTES0 = _getsizeof(b"")
_SZ_BYTEARRAY0 = _getsizeof(bytearray(1)) - 1
#: What the decoder's own bookkeeping costs per container on its stack (three list
#: slots, and the ints for its position and the number of values it holds).
_BOOK = 24 + 32 + 32
#: Memory of a tuple of 1-3 items, with the bookkeeping.
_SZ_T = (0, _r16(_SZ_TUPLE0 + 8) + _BOOK, _r16(_SZ_TUPLE0 + 16) + _BOOK, _r16(_SZ_TUPLE0 + 24) + _BOOK)
#: A stack slot (the list over-allocates by an eighth).
_SLOT = 9
#: Items unpacked per step in a run of fixed-width numbers, or of constants.
_RUN = 1024
#: Strings longer than this are decoded in pieces of this size.
_TEXT_PIECE = 1 << 20
#: ... and in pieces of this size when they hold lone surrogates (slow to decode).
_SURROGATE_PIECE = 1 << 16
#: Tuples longer than this are built in chunks of this size.
_TUPLE_CHUNK = 1 << 16

# Work, in nanoseconds of a slow host (measured on a 2-core VM), of what is charged:
# what resolving a reference or building a value record costs beyond decoding its
# tuple (which is bounded like any other container, by memory).
_WORK_SURROGATE = 300
_WORK_REF = {"r": 300, "c": 3500}
_WORK_INTERFACE = 16000  # a descriptor: the proxy class built for it
_WORK_MEMBER = 1600  # per member of an interface descriptor
_WORK_RECORD = {
    "complex": 600, "date": 400, "time": 600, "datetime": 2000, "timedelta": 1000,
    "timezone": 1500, "Decimal": 600, "Fraction": 1000, "UUID": 1000, "ndarray": 6000,
    "vt": 5000, "frozenset": 1000,
}
_WORK_OTHER = 5000
#: Memory of what a reference resolves to that the decoder cannot see: a new proxy
#: and its table entry (about 270 bytes), and the proxy class of a new interface
#: (about 450 bytes a member). Members are charged nine times that: a class is a
#: few long-lived objects per member that every full garbage collection walks.
_MEM_REF = {"r": 16, "c": 512}
_MEM_INTERFACE = 16384
_MEM_MEMBER = 4096

#: Key types whose hashing and comparison is data-only (values the decoder or the value
#: records make).
_DATA_KEYS = frozenset({str, bytes, int, float, bool, type(None), complex})


def add_data_keys(*types: type) -> None:
    """Let values of ``types`` be dict keys and set items unchecked (the stdlib value
    types, added by :mod:`capbridge._codec` when it imports them: such a value reaches
    the decoder only as a record that module built)."""
    global _DATA_KEYS
    _DATA_KEYS = _DATA_KEYS | frozenset(types)

_unpack_i = struct.Struct("<i").unpack_from
_unpack_H = struct.Struct("<H").unpack_from
_unpack_I = struct.Struct("<I").unpack_from
_unpack_Q = struct.Struct("<Q").unpack_from
_unpack_d = struct.Struct(">d").unpack_from
_from_bytes = int.from_bytes
_LITTLE = sys.byteorder == "little"

try:
    from _collections import _count_elements
except ImportError:  # pragma: no cover - pure-Python fallback
    def _count_elements(mapping: dict, iterable: Any) -> None:
        get = mapping.get
        for elem in iterable:
            mapping[elem] = get(elem, 0) + 1

#: The one-byte constants, by opcode (``_NO`` for every other byte).
_NO: Any = object()
_C1: list = [_NO] * 256
_C1[_NONE], _C1[_TRUE], _C1[_FALSE], _C1[_EMPTY_TUPLE] = None, True, False, ()
_C1_BYTES = bytes((_NONE, _TRUE, _FALSE, _EMPTY_TUPLE))
#: Ends every frame's copy (no opcode is 0).
_SENTINEL = b"\0"
_c1_get = _C1.__getitem__
#: One-character strings of one UTF-8 byte (the interpreter shares them).
_CHR1: list = [chr(b) for b in range(128)] + [None] * 128
#: Lone surrogates as ``surrogatepass`` writes them.
_SURROGATE = re.compile(rb"\xed[\xa0-\xbf][\x80-\xbf]")
_FOUR_BYTE = re.compile(rb"[\xf0-\xf4]")
_WIDE = re.compile(rb"[\xc4-\xf4]")
_CONTINUATION = bytes(range(0x80, 0xC0))


def _bad(what: str) -> ProtocolError:
    return ProtocolError(f"malformed body: {what}")


def _over(what: str) -> ProtocolError:
    return ProtocolError(f"message over budget: {what}")


def _forbidden(op: int, at: int) -> ProtocolError:
    return ProtocolError(f"forbidden pickle opcode {_op_name(op)} (0x{op:02x}) at offset {at}")


def _too_deep(limit: int) -> ProtocolError:
    return ProtocolError(f"message nested deeper than {limit} levels")


def _over_memory(mem: int, limit: int, n: int) -> ProtocolError:
    return _over(f"decoding it would take more than {limit // 1024} KiB of host memory "
                 f"(it reached {mem // 1024} KiB from a {n}-byte frame; see Limits.max_decoded_mb)")


def _over_work(limit: int, n: int) -> ProtocolError:
    return _over(f"its value records, references and lone surrogates would take the host more than "
                 f"{limit // 1_000_000} ms to build for a {n}-byte frame (send fewer, or plainer data)")


def _gather(body: Any, start: int, count: int, width: int, fmt: str, big_endian: bool) -> list:
    """``count`` fixed-width numbers whose ``width - 1`` argument bytes follow an opcode
    byte each, starting at ``body[start]`` (the first opcode)."""
    size = width - 1
    stop = start + count * width
    if _LITTLE:
        buf = bytearray(count * size)
        for k in range(size):
            src = body[start + 1 + k:stop:width]
            buf[(size - 1 - k if big_endian else k)::size] = src
        return memoryview(buf).cast(fmt).tolist()
    order = ">" if big_endian else "<"
    return list(struct.unpack_from(order + ("x" + fmt) * count, body, start))


# --------------------------------------------------------------------------- the common shapes
#
# Most messages are a call with a few scalar arguments, or an answer that is one
# scalar. These two readers handle exactly those shapes, with the same reading of
# each opcode as decode(), and return a "not small" answer for anything else (decode()
# then reads the body and names what is wrong). Small by construction: no budget can
# be reached (strings with lone surrogates, which cost work, are left to decode()).


def _scalar(body: Any, i: int, n: int) -> tuple[Any, int]:
    """The scalar whose opcode is at ``i`` and the offset after it; ``_NO`` if the
    opcode is not a plain scalar one (or runs past ``n``)."""
    op = body[i]
    if op == 0x4B:
        return body[i + 1], i + 2
    if op == 0x8C:
        j = i + 2 + body[i + 1]
        if j > n:
            return _NO, i
        return str(body[i + 2:j], "utf-8"), j
    if op == 0x4A:
        return _unpack_i(body, i + 1)[0], i + 5
    if op == 0x4E:
        return None, i + 1
    if op == 0x88:
        return True, i + 1
    if op == 0x89:
        return False, i + 1
    if op == 0x4D:
        v = _unpack_H(body, i + 1)[0]
        return (_NO, i) if v < 256 else (v, i + 3)
    if op == 0x47:
        return _unpack_d(body, i + 1)[0], i + 9
    if op == 0x43:
        j = i + 2 + body[i + 1]
        if j > n:
            return _NO, i
        return bytes(body[i + 2:j]), j
    if op == 0x8A:
        j = i + 2 + body[i + 1]
        if j > n:
            return _NO, i
        return _from_bytes(body[i + 2:j], "little", signed=True), j
    return _NO, i


def _frame_start(body: Any, start: int, n: int) -> int:
    """Offset after PROTO 5 and a FRAME covering the rest (or no frame, for at most 3
    bytes); -1 if the head is otherwise."""
    if body[start] != 0x80 or body[start + 1] != 5:
        return -1
    i = start + 2
    if body[i] == 0x95:
        if n - i < 13 or _unpack_Q(body, i + 1)[0] != n - i - 9 or n - i - 9 > MAX_FRAME:
            return -1
        return i + 9
    return i if n - i < 4 else -1


def small_answer(body: Any, start: int, n: int = -1) -> Any:
    """The value of a payload that is one scalar, or ``NOT_SMALL`` (``n``: len(body),
    if the caller has it)."""
    if n < 0:
        n = len(body)
    try:
        if body[start] != 0x80 or body[start + 1] != 5:
            return NOT_SMALL
        i = start + 2
        op = body[i]
        if op == 0x95:  # FRAME: as the pickler writes it, covering exactly the rest
            if n - i < 13 or _unpack_Q(body, i + 1)[0] != n - i - 9 or n - i - 9 > MAX_FRAME:
                return NOT_SMALL
            i += 9
            op = body[i]
        elif n - i >= 4:  # the pickler frames anything of 4 bytes or more
            return NOT_SMALL
        if op == 0x4B:
            value: Any = body[i + 1]
            i += 2
        elif op == 0x4E and i + 2 == n and body[i + 1] == 0x2E:
            return None
        else:
            value, i = _scalar(body, i, n)
            if value is _NO:
                return NOT_SMALL
        if i != n - 1 or body[i] != 0x2E:
            return NOT_SMALL
        return value
    except (IndexError, struct.error, UnicodeDecodeError):
        return NOT_SMALL


#: The payloads of None and of ints 0-255, exactly as the pickler writes them.
NONE_PAYLOAD = b"\x80\x05N."
SMALL_INT_PAYLOADS: tuple[bytes, ...] = tuple(b"\x80\x05K" + bytes((v,)) + b"." for v in range(256))
#: The commonest answers (those, booleans, empty str and bytes) by payload: a fixed
#: table, so reading one is a single lookup. small_answer reads each the same way.
COMMON_ANSWERS: dict[bytes, Any] = {
    NONE_PAYLOAD: None, b"\x80\x05\x88.": True, b"\x80\x05\x89.": False,
    b"\x80\x05\x8c\x00.": "", b"\x80\x05C\x00.": b"",
    **{payload: v for v, payload in enumerate(SMALL_INT_PAYLOADS)},
}


#: Names kept per connection by small_call (a hostile peer can only fill it).
MAX_NAMES = 512


def small_call(body: Any, start: int, n: int = -1, names: dict | None = None) -> tuple | None:
    """``(name, args, {})`` of a CALL payload whose name is a str or None and whose
    arguments are a few scalars and no keywords; None for any other payload
    (``n``: len(body), if the caller has it). ``names`` caches decoded names
    (bytes -> str): a method name repeats from call to call, and the cached str keeps
    its hash."""
    if n < 0:
        n = len(body)
    try:
        if body[start] != 0x80 or body[start + 1] != 5:
            return None
        i = start + 2
        op = body[i]
        if op == 0x95:  # FRAME: as the pickler writes it, covering exactly the rest
            if n - i < 13 or _unpack_Q(body, i + 1)[0] != n - i - 9 or n - i - 9 > MAX_FRAME:
                return None
            i += 9
            op = body[i]
        elif n - i >= 4:
            return None
        if op == 0x8C:
            j = i + 2 + body[i + 1]
            if j > n:
                return None
            raw = body[i + 2:j]
            name: Any = names.get(raw) if names is not None and type(raw) is bytes else None
            if name is None:
                name = str(raw, "utf-8")
                if names is not None and type(raw) is bytes and len(names) < MAX_NAMES:
                    names[raw] = name
            i = j
        elif op == 0x4E:
            name = None
            i += 1
        else:
            return None
        op = body[i]
        if op == 0x29:
            args: tuple = ()
            i += 1
        else:
            marked = op == 0x28
            if marked:
                i += 1
            items = []
            while True:
                op = body[i]
                if op == 0x4B:  # the common arguments inline, the rest by _scalar
                    items.append(body[i + 1])
                    i += 2
                elif op == 0x8C:
                    j = i + 2 + body[i + 1]
                    if j > n:
                        return None
                    items.append(str(body[i + 2:j], "utf-8"))
                    i = j
                elif marked and op == 0x74 or not marked and 0x85 <= op <= 0x87:
                    break
                else:
                    value, i = _scalar(body, i, n)
                    if value is _NO:
                        return None
                    items.append(value)
                if len(items) > 16:
                    return None
            if len(items) != op - 0x84 if not marked else len(items) < 4:
                return None
            args = tuple(items)
            i += 1
        if i + 3 != n or body[i] != 0x7D or body[i + 1] != 0x87 or body[i + 2] != 0x2E:
            return None
        return (name, args, {})
    except (IndexError, struct.error, UnicodeDecodeError):
        return None


class _NotSmall:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NOT_SMALL"


#: What :func:`small_answer` returns for a payload it does not read.
NOT_SMALL: Any = _NotSmall()


# --------------------------------------------------------------------------- decode


class _GcPause:
    """The cyclic garbage collector off while large bodies are decoded.

    Decoding builds trees (no memo, so no cycles) of up to millions of containers;
    each one allocated counts towards a collection, and a full collection walks every
    container alive - one C call, holding the GIL, that grows with the message (about
    100 ms for a 16 MiB body on a small VM). Nothing a decoder builds is garbage for
    the cyclic collector, so it waits until the last concurrent decode is done.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._paused = False

    def __enter__(self) -> None:
        with self._lock:
            if not self._depth and gc.isenabled():
                gc.disable()
                self._paused = True
            self._depth += 1

    def __exit__(self, *exc: Any) -> None:
        with self._lock:
            self._depth -= 1
            if not self._depth and self._paused:
                self._paused = False
                gc.enable()


_gc_pause = _GcPause()
#: Bodies from this size on are decoded with the collector paused.
_GC_PAUSE_FROM = 64 * 1024


def decode(body: Any, ref: Callable[[tuple], Any], budget: Budget = DEFAULT_BUDGET, start: int = 0) -> Any:
    """Build the value the pickle in ``body[start:]`` holds, or raise :class:`ProtocolError`.

    ``ref`` turns a persistent id (a tuple built by this decoder) into the object it
    stands for, or raises. The budgets are reckoned from ``len(body)``.
    """
    if len(body) < _GC_PAUSE_FROM:
        return _decode(body, ref, budget, start, None)
    with _gc_pause:
        wreck: list = []
        try:
            return _decode(body, ref, budget, start, wreck)
        finally:
            if wreck:
                _teardown(wreck)


def _teardown(wreck: list) -> None:
    """Free what a refused decode left, in bounded steps.

    Freeing a container frees everything in it in one C call; for a message refused
    at hundreds of MiB that is millions of objects, and the GIL held for as long.
    Lists, sets and dicts are emptied a chunk at a time, descending into the large
    ones, so no step frees more than about a chunk of objects.
    """
    todo = [(wreck, 0)]
    while todo:
        x, level = todo[-1]
        t = type(x)
        if not x:
            todo.pop()
            continue
        if t is list:
            chunk = x[-_TUPLE_CHUNK:]
            del x[-_TUPLE_CHUNK:]
        elif t is set:
            chunk = [x.pop() for _ in range(min(len(x), _TUPLE_CHUNK))]
        else:
            chunk = []
            for _ in range(min(len(x), _TUPLE_CHUNK)):
                chunk += x.popitem()
        # The stacks and what is on them, and below them any large container.
        todo += [(y, level + 1) for y in chunk if type(y) in _EMPTIABLE and (level < 2 or len(y) > 64)]
        del chunk


_EMPTIABLE = (list, set, dict)


def _decode(body: Any, ref: Callable[[tuple], Any], budget: Budget, start: int, wreck: list | None) -> Any:
    n = len(body)
    if n - start < 3 or body[start] != 0x80 or body[start + 1] != 5:
        raise _bad("not a pickle of protocol 5")
    if body[n - 1] != 0x2E:
        raise _bad("truncated pickle, or bytes after STOP (the body does not end with STOP)")
    # Hot names as locals (a global lookup costs as much as the rest of a push).
    L_C1, L_NO, L_CHR1, L_SZ_INT, L_SZ_FLOAT, L_SZ_T, L_BOOK, L_SZ_LIST, L_SZ_DICT, L_SZ_SET = \
        _C1, _NO, _CHR1, _SZ_INT, _SZ_FLOAT, _SZ_T, _BOOK, _SZ_LIST, _SZ_DICT, _SZ_SET
    L_unpack_i, L_unpack_H, L_unpack_d, L_c1_get, L_C1_BYTES, L_RUN, L_RUNS = \
        _unpack_i, _unpack_H, _unpack_d, _c1_get, _C1_BYTES, _RUN, _RUNS
    L_bisect, L_CHUNK, L_LIGHT, L_BATCH, L_getsizeof, L_SZ_TUPLE0, L_MIN_RUN, L_RUN_PREFIX = \
        _bisect, _TUPLE_CHUNK, _LIGHT_KEY, BATCH, _getsizeof, _SZ_TUPLE0, _MIN_RUN, _RUN_PREFIX
    stack: list = []
    push = stack.append
    # Containers on the stack: their positions (ascending), depths and how many values
    # they hold (all the way down). Scalars have depth 0 and no entry, so the common
    # pushes cost nothing extra.
    cpos: list = []
    cdep: list = []
    cw: list = []
    marks: list = []
    base = 0  # where the innermost MARK is (nothing below it may be taken)
    mem = objs = keys = work = nrefs = 0
    limit = budget.memory_for(n)
    wlim = budget.work_for(n)
    maxd = budget.max_depth
    mhash = budget.max_same_hash
    hashes: dict = {}  # id(container) -> {hash: count}, for containers with many keys
    pos = start + 2  # where the next frame (or what stands outside frames) begins
    whole = memoryview(body)
    buf: Any = b""
    i = 0
    sbase = pos
    try:
        while True:
            # -- the next segment: a frame, or what the pickler writes outside frames --
            if body[pos] == 0x95:
                if n - pos < 9:
                    raise _bad("truncated pickle")
                flen = _unpack_Q(body, pos + 1)[0]
                sbase = pos + 9
                if sbase + flen > n:
                    raise _bad("truncated pickle (FRAME longer than the body)")
                if flen < 4 or flen > MAX_FRAME:
                    raise _bad(f"a FRAME of {flen} bytes at offset {pos} (the pickler writes 4 to {MAX_FRAME})")
                framed = True
                buf = _SENTINEL.join((whole[sbase:sbase + flen], b""))
            else:
                framed = False
                sbase = pos
                buf = _SENTINEL.join((whole[pos:pos + 3], b""))
            seglen = len(buf) - 1
            # What objects may take in this segment: the budget, less a 16th for the allocator's
            # overhead, the stack, and a stack slot for every byte of the segment.
            lim = limit - (limit >> 4) - _SLOT * (len(stack) + seglen) - 8 * len(marks)
            i = 0
            while True:
                op = buf[i]
                # -- scalars, the cheapest first --------------------------------------
                if op == 0x4B:
                    push(buf[i + 1])
                    i += 2
                elif (c := L_C1[op]) is not L_NO:
                    if L_C1[buf[i + 1]] is L_NO:
                        push(c)
                        i += 1
                    else:  # a run of constants
                        w = buf[i:i + L_RUN]
                        r = len(w) - len(w.lstrip(L_C1_BYTES))
                        stack.extend(map(L_c1_get, w[:r]))
                        i += r
                elif op == 0x8C:
                    L = buf[i + 1]
                    if not L:
                        push("")
                        i += 2
                        continue
                    j = i + 2 + L
                    if j > seglen:
                        raise _bad("truncated pickle (a string runs past the end of its frame)")
                    if L > 1:
                        try:
                            s = buf[i + 2:j].decode()
                        except UnicodeDecodeError:
                            s, w = _text_slow(buf, i + 2, j)
                            work += w
                            if work > wlim:
                                raise _over_work(wlim, n) from None
                        # ASCII: 49 + L bytes; any other: at most 76 + L.
                        mem += (64 + L if len(s) == L else 91 + L) & -16
                        objs += 1
                        if mem > lim:
                            raise _over_memory(mem, limit, n)
                    else:
                        s = L_CHR1[buf[i + 2]]
                        if s is None:
                            raise _bad("invalid UTF-8 in a string: invalid start byte")
                    push(s)
                    i = j
                elif op == 0x43:
                    L = buf[i + 1]
                    if not L:
                        push(b"")
                        i += 2
                        continue
                    j = i + 2 + L
                    if j > seglen:
                        raise _bad("truncated pickle (bytes run past the end of their frame)")
                    push(buf[i + 2:j])  # a frame is bytes: its slices are new bytes (or shared)
                    if L > 1:
                        mem += (_SZ_BYTES0 + 15 + L) & -16
                        objs += 1
                        if mem > lim:
                            raise _over_memory(mem, limit, n)
                    i = j
                elif op == 0x87 or op == 0x86 or op == 0x85:
                    k = op - 0x84
                    m = len(stack) - k
                    if m < base:
                        raise _bad("stack underflow")
                    if k == 1:
                        stack[-1] = (stack[-1],)
                    elif k == 2:
                        t = (stack[-2], stack[-1])
                        del stack[-1]
                        stack[-1] = t
                    else:
                        t = (stack[-3], stack[-2], stack[-1])
                        del stack[-2:]
                        stack[-1] = t
                    if cpos and cpos[-1] >= m:
                        d = 1
                        w = k
                        while cpos and cpos[-1] >= m:
                            cpos.pop()
                            x = cdep.pop()
                            w += cw.pop()
                            mem -= L_BOOK
                            if x >= d:
                                d = x + 1
                        if d > maxd:
                            raise _too_deep(maxd)
                        cdep.append(d)
                        cw.append(w)
                    else:
                        cdep.append(1)
                        cw.append(k)
                    cpos.append(m)
                    mem += L_SZ_T[k]
                    objs += 1
                    i += 1
                    if mem > lim:
                        raise _over_memory(mem, limit, n)
                elif op == 0x4A:
                    push(L_unpack_i(buf, i + 1)[0])
                    mem += L_SZ_INT
                    objs += 1
                    i += 5
                elif op == 0x28:
                    if len(marks) >= maxd:
                        raise _too_deep(maxd)
                    base = len(stack)
                    marks.append(base)
                    i += 1
                    w = L_RUNS.get(buf[i])
                    if w is not None and i + L_MIN_RUN * w < seglen and buf[i + L_MIN_RUN * w] == buf[i] and \
                            buf[i:i + L_MIN_RUN * w:w] == L_RUN_PREFIX[buf[i]]:
                        i, mem, objs = _run(buf, i, seglen, stack, mem, objs)
                        if mem > lim:
                            raise _over_memory(mem, limit, n)
                elif op == 0x4D:
                    v = L_unpack_H(buf, i + 1)[0]
                    if v < 256:
                        raise _bad(f"BININT2 of {v} (the pickler writes BININT1)")
                    push(v)
                    mem += L_SZ_INT
                    objs += 1
                    i += 3
                elif op == 0x47:
                    push(L_unpack_d(buf, i + 1)[0])
                    mem += L_SZ_FLOAT
                    objs += 1
                    i += 9
                # -- containers -------------------------------------------------------
                elif op == 0x5D or op == 0x7D or op == 0x8F:
                    cpos.append(len(stack))
                    cdep.append(1)
                    cw.append(0)
                    if op == 0x5D:
                        push([])
                        mem += L_SZ_LIST + L_BOOK
                    elif op == 0x7D:
                        push({})
                        mem += L_SZ_DICT + L_BOOK
                    else:
                        push(set())
                        mem += L_SZ_SET + L_BOOK
                    objs += 1
                    i += 1
                    if mem > lim:
                        raise _over_memory(mem, limit, n)
                elif op == 0x65 or op == 0x74 or op == 0x75 or op == 0x90:
                    if not marks:
                        raise _bad(f"{_op_name(op)} without MARK")
                    m = marks.pop()
                    base = marks[-1] if marks else 0
                    k = len(stack) - m
                    heavy = None
                    # The container entries of the items: their greatest depth and the
                    # values they hold (and, for keys, which ones hold many).
                    if cpos and cpos[-1] >= m:
                        p = L_bisect(cpos, m)
                        nc = len(cpos) - p
                        if nc <= L_CHUNK:
                            ww = cw[p:]
                            d = max(cdep[p:]) + 1
                            w = sum(ww) + k
                            if (op == 0x75 or op == 0x90) and max(ww) > L_LIGHT:
                                heavy = {cpos[q] - m: cw[q] for q in range(p, len(cpos)) if cw[q] > L_LIGHT}
                            del cpos[p:], cdep[p:], cw[p:]
                        else:
                            d, w = _pop_entries(cpos, cdep, cw, p)
                            d += 1
                            w += k
                        mem -= L_BOOK * nc
                        if d > maxd:
                            raise _too_deep(maxd)
                    else:
                        d = 1
                        w = k
                    if op == 0x74:
                        if k < 4:
                            raise _bad(f"a tuple of {k} items written with MARK and TUPLE "
                                       "(the pickler writes EMPTY_TUPLE or TUPLE1-3)")
                        if k > L_CHUNK:
                            if mem + _SLOT * len(stack) + 8 * k > lim:
                                raise _over_memory(mem + _SLOT * len(stack) + 8 * k, limit, n)
                            obj: Any = _big_tuple(stack, m, budget.stop)
                        else:
                            obj = tuple(stack[m:])
                            del stack[m:]
                        mem += ((L_SZ_TUPLE0 + 15 + 8 * k) & -16) + L_BOOK
                        cpos.append(m)
                        cdep.append(d)
                        cw.append(w)
                        objs += 1
                        push(obj)
                    else:
                        if m < 1 or not cpos or cpos[-1] != m - 1:
                            raise _bad(f"{_op_name(op)} with nothing to add to")
                        target = stack[m - 1]
                        tt = type(target)
                        if op == 0x65:
                            if tt is not list:
                                raise _bad(f"APPENDS to a {tt.__name__}")
                            size = len(target)
                            if k > L_BATCH or size % L_BATCH or k < 2 and (not k or not size):
                                raise _bad_batch(op, k, size)
                            target.extend(stack[m:])
                            del stack[m:]
                            mem += 10 * k + 64  # list growth: at most 1/8 more, and 4 slots
                        else:
                            if tt is not (dict if op == 0x75 else set):
                                raise _bad(f"{_op_name(op)} {'on' if op == 0x75 else 'to'} a {tt.__name__}")
                            size = len(target)
                            if size % L_BATCH:
                                raise _bad_batch(op, k, size)
                            items = stack[m:]
                            del stack[m:]
                            if op == 0x75:
                                if k & 1 or k > 2 * L_BATCH or k < 4 and not size:
                                    raise _bad_batch(op, k, size)
                                ks = items[0::2]
                                keys += k >> 1
                            else:
                                if k > L_BATCH or not k and not size:
                                    raise _bad_batch(op, k, size)
                                ks = items
                                keys += k
                            before = L_getsizeof(target)
                            # Few keys in a container (and no references or large keys):
                            # no hash can be shared by more than max_same_hash of them.
                            if nrefs or heavy is not None or size + len(ks) > mhash:
                                mem += _check_keys(hashes, target, ks, budget, nrefs, heavy, 2 if op == 0x75 else 1)
                            if op == 0x75:
                                target.update(zip(ks, items[1::2]))
                            else:
                                target.update(items)
                            mem += L_getsizeof(target) - before
                            if keys > budget.max_keys:
                                raise _over(f"more than {budget.max_keys} dict and set entries")
                        if d > cdep[-1]:
                            cdep[-1] = d
                        cw[-1] += w
                    if mem > lim:
                        raise _over_memory(mem, limit, n)
                    i += 1
                elif op == 0x61 or op == 0x73:
                    k = 1 if op == 0x61 else 2
                    m = len(stack) - k
                    if m - 1 < base or not cpos:
                        raise _bad(f"{_op_name(op)} with nothing to add to")
                    d = 1
                    w = k
                    heavy = None
                    while cpos[-1] >= m:
                        p = cpos.pop()
                        x = cdep.pop()
                        ww = cw.pop()
                        w += ww
                        mem -= L_BOOK
                        if x >= d:
                            d = x + 1
                        if p == m and op == 0x73:
                            heavy = ww
                        if not cpos:
                            raise _bad(f"{_op_name(op)} with nothing to add to")
                    if d > maxd:
                        raise _too_deep(maxd)
                    if cpos[-1] != m - 1:
                        raise _bad(f"{_op_name(op)} with nothing to add to")
                    target = stack[m - 1]
                    if op == 0x61:
                        if type(target) is not list:
                            raise _bad(f"APPEND to a {type(target).__name__}")
                        if target:
                            raise _bad("APPEND to a list that has items (the pickler writes APPENDS)")
                        target.append(stack[-1])
                        mem += 16  # the list's item array
                    else:
                        if type(target) is not dict:
                            raise _bad(f"SETITEM on a {type(target).__name__}")
                        if target:
                            raise _bad("SETITEM on a dict that has items (the pickler writes SETITEMS)")
                        key = stack[-2]
                        if nrefs and type(key) not in _DATA_KEYS:
                            _check_key(key, 0)
                        if heavy is not None and heavy > budget.max_key_values:
                            raise _heavy_key(heavy, budget.max_key_values)
                        keys += 1
                        target[key] = stack[-1]
                        mem += _SZ_DICT1 - L_SZ_DICT
                    del stack[m:]
                    if d > cdep[-1]:
                        cdep[-1] = d
                    cw[-1] += w
                    i += 1
                    if mem > lim:
                        raise _over_memory(mem, limit, n)
                elif op == 0x51:
                    if len(stack) <= base:
                        raise _bad("stack underflow")
                    pid = stack[-1]
                    if type(pid) is not tuple or not pid:
                        raise ProtocolError("malformed reference")
                    kind = pid[0]
                    if kind == "v" and len(pid) == 3 and pid[1] == "frozenset":
                        # A frozenset (the sandbox's pickler writes them as records of a
                        # set, whose items were checked as it was built).
                        items = pid[2]
                        if type(items) is not set:
                            raise ProtocolError("bad frozenset record")
                        size = _getsizeof(items)
                        if mem + size > lim:
                            raise _over_memory(mem + size, limit, n)
                        obj = frozenset(items)
                        mem += _r16(_getsizeof(obj)) - size  # the set goes with the record
                        work += _WORK_RECORD["frozenset"]
                        stack[-1] = obj
                        pid = items = None
                    else:
                        w, extra = _ref_cost(pid)
                        work += w
                        if work > wlim:
                            raise _over_work(wlim, n)
                        mem += extra
                        if mem > lim:
                            raise _over_memory(mem, limit, n)
                        obj = ref(pid)
                        stack[-1] = obj  # keeps the id tuple's depth entry, not its memory
                        nrefs += 1
                        mem -= (L_SZ_TUPLE0 + 15 + 8 * len(pid)) & -16
                        if kind == "v":
                            t = type(obj)
                            mem += _r16(_getsizeof(obj)) if t in _DATA_KEYS or t.__name__ == "ndarray" else 256
                    objs += 1
                    i += 1
                # -- strings and bytes: in a frame if shorter than its target ---------------
                elif op == 0x58 or op == 0x42 or op == 0x96:
                    if framed:
                        a, j = _blob_span(buf, i, op)
                        if j > seglen:
                            raise _bad("truncated pickle (a string or bytes runs past the end of its frame)")
                        size = j - a
                        if size >= FRAME_TARGET:
                            raise _bad(f"{size} bytes of {_op_name(op)} inside a frame (the pickler writes "
                                       f"{FRAME_TARGET} bytes or more outside frames)")
                        if op == 0x42:
                            obj = buf[a:j]
                            mem += (_SZ_BYTES0 + 15 + size) & -16
                        elif op == 0x96:
                            obj = bytearray(buf[a:j])
                            mem += (_SZ_BYTEARRAY0 + 15 + size) & -16
                        else:
                            try:
                                obj = buf[a:j].decode()
                            except UnicodeDecodeError:
                                obj, w = _text_slow(buf, a, j)
                                work += w
                                if work > wlim:
                                    raise _over_work(wlim, n) from None
                            mem += _r16(_getsizeof(obj))
                        push(obj)
                        objs += 1
                        i = j
                        if mem > lim:
                            raise _over_memory(mem, limit, n)
                    else:
                        a, j = _blob_span(body, sbase + i, op)
                        size = j - a
                        if j > n - 1:
                            raise _bad("truncated pickle")
                        if size < FRAME_TARGET:
                            raise _bad(f"{size} bytes of {_op_name(op)} outside a frame (the pickler writes "
                                       f"fewer than {FRAME_TARGET} bytes inside frames)")
                        if op == 0x58:
                            obj, w, sm = _text(body, a, j, budget, lim - mem, wlim - work, n)
                            work += w
                        else:
                            sm = _r16((_SZ_BYTEARRAY0 if op == 0x96 else _SZ_BYTES0) + size)
                            if mem + sm > lim:
                                raise _over_memory(mem + sm, limit, n)
                            obj = bytearray(whole[a:j]) if op == 0x96 else bytes(whole[a:j])
                        mem += sm
                        push(obj)
                        objs += 1
                        pos = j
                        break
                elif op == 0x8A or op == 0x8B:
                    if op == 0x8A:
                        a = i + 2
                        size = buf[i + 1]
                    else:
                        a = i + 5
                        size = _unpack_I(buf, i + 1)[0]
                        if size > budget.max_int_bytes:
                            raise _over(f"an int of {size} bytes (at most {budget.max_int_bytes})")
                    j = a + size
                    if j > seglen:
                        raise _bad("truncated pickle (an int runs past the end of its frame)")
                    push(_from_bytes(buf[a:j], "little", signed=True))
                    mem += (_SZ_INT0 + 15 + 4 * ((8 * size + 29) // 30)) & -16
                    objs += 1
                    i = j
                # -- the end of a segment, and of the body --------------------------------
                elif op == 0 and i == seglen:
                    if not framed:
                        if sbase + seglen >= n:
                            raise _bad("truncated pickle")
                        raise _bad(f"more than 3 bytes of opcodes outside a frame at offset {sbase}")
                    pos = sbase + seglen
                    break
                elif op == 0x2E:
                    if sbase + i != n - 1:
                        raise _bad(f"{n - sbase - i - 1} bytes after STOP")
                    if len(stack) != 1 or marks:
                        raise _bad("STOP with " + ("an open MARK" if marks else f"{len(stack)} values on the stack"))
                    _checkpoint(budget, n, mem, objs, work, limit - (limit >> 4), wlim)
                    value = stack.pop()
                    return value
                elif op == 0x95:
                    raise _bad(f"FRAME at offset {sbase + i} inside the previous frame")
                elif op == 0x80:
                    raise _bad(f"PROTO at offset {sbase + i}")
                else:
                    raise _forbidden(op, sbase + i)
            # -- between segments: every budget, and the stop hook ---------------------
            _checkpoint(budget, n, mem + _SLOT * len(stack) + 8 * len(marks), objs, work, limit - (limit >> 4), wlim)
            if pos >= n:
                raise _bad("truncated pickle")
    except IndexError:
        if i >= len(buf) - 1:
            raise _bad(f"an opcode cut off at the end of a frame (offset {sbase + i})") from None
        raise _bad("stack underflow") from None
    except struct.error:
        raise _bad("truncated pickle") from None
    except UnicodeDecodeError as exc:
        raise _bad(f"invalid UTF-8 in a string: {exc.reason}") from None
    except TypeError as exc:  # an unhashable key
        raise _bad(f"TypeError: {str(exc)[:200]}") from None
    except RecursionError:  # pragma: no cover - depth is bounded above
        raise _too_deep(budget.max_depth) from None
    except MemoryError:
        raise _over("the host ran out of memory decoding it") from None
    finally:
        whole.release()
        if stack and wreck is not None:  # refused: the caller frees what was built, in steps
            wreck.append(stack)


def _blob_span(src: Any, p: int, op: int) -> tuple[int, int]:
    """Where the data of the BINUNICODE, BINBYTES or BYTEARRAY8 at ``src[p]`` starts and ends."""
    if op == 0x96:
        return p + 9, p + 9 + _unpack_Q(src, p + 1)[0]
    return p + 5, p + 5 + _unpack_I(src, p + 1)[0]


def _bad_batch(op: int, k: int, size: int) -> ProtocolError:
    if size % BATCH:
        return _bad(f"{_op_name(op)} after a batch of fewer than {BATCH} items")
    if op == 0x65:
        return _bad(f"APPENDS of {k} items (the pickler writes 1 to {BATCH}, and a one-item list with APPEND)")
    if op == 0x75:
        if k & 1:
            return _bad("SETITEMS with an odd number of items")
        return _bad(f"SETITEMS of {k // 2} pairs (the pickler writes 2 to {BATCH}, a one-item dict with "
                    f"SETITEM, and an empty last batch only after a multiple of {BATCH})")
    return _bad(f"ADDITEMS of {k} items (the pickler writes 1 to {BATCH}, and an empty last batch only "
                f"after a multiple of {BATCH})")


def _pop_entries(cpos: list, cdep: list, cw: list, p: int) -> tuple[int, int]:
    """Remove the container entries from ``p`` on; returns their greatest depth and
    the values they hold, in chunks (no single C call over millions of entries)."""
    d = w = 0
    while len(cpos) > p:
        q = max(p, len(cpos) - _TUPLE_CHUNK)
        dd = max(cdep[q:])
        if dd > d:
            d = dd
        w += sum(cw[q:])
        del cpos[q:], cdep[q:], cw[q:]
    return d, w


def _checkpoint(budget: Budget, n: int, mem: int, objs: int, work: int, lim: int, wlim: int) -> None:
    if mem > lim:
        raise _over_memory(mem, budget.memory_for(n), n)
    if objs > budget.max_objects:
        raise _over(f"more than {budget.max_objects} objects")
    if work > wlim:
        raise _over_work(wlim, n)
    stop = budget.stop
    if stop is not None:
        exc = stop()
        if exc is not None:
            raise exc


def _ref_cost(pid: tuple) -> tuple[int, int]:
    """What resolving the persistent id ``pid`` costs the host beyond its tuple:
    (work, memory the decoder does not see). See ``_WORK_*`` and ``_MEM_*``."""
    kind = pid[0]
    if kind == "v":
        return (_WORK_RECORD.get(pid[1], _WORK_OTHER) if len(pid) == 3 and type(pid[1]) is str else _WORK_OTHER), 0
    if kind == "c":
        desc = pid[3] if len(pid) == 4 else None
        if type(desc) is tuple and len(desc) == 8:
            members = 0
            for group in desc[2:5]:
                if type(group) is tuple:
                    members += len(group)
            return (_WORK_REF["c"] + _WORK_INTERFACE + _WORK_MEMBER * members,
                    _MEM_REF["c"] + _MEM_INTERFACE + _MEM_MEMBER * members)
        return _WORK_REF["c"], _MEM_REF["c"]
    if type(kind) is str and kind in _WORK_REF:
        return _WORK_REF[kind], _MEM_REF[kind]
    return _WORK_OTHER, 0


def _big_tuple(stack: list, m: int, stop: Callable[[], BaseException | None] | None) -> tuple:
    """``tuple(stack[m:])``, removed from the stack, built in chunks so that no single
    C call holds the GIL for long (the chunks come from a generator, between whose
    steps other threads run)."""

    def chunks() -> Any:
        for p in range(m, len(stack), _TUPLE_CHUNK):
            yield stack[p:p + _TUPLE_CHUNK]
            if stop is not None:
                exc = stop()
                if exc is not None:
                    raise exc

    t = tuple(itertools.chain.from_iterable(chunks()))
    while len(stack) - m > _TUPLE_CHUNK:
        del stack[-_TUPLE_CHUNK:]
    del stack[m:]
    return t


def _text_slow(buf: Any, a: int, j: int) -> tuple[str, int]:
    """A short string that is not strict UTF-8: lone surrogates (as the pickler writes
    them) are kept; anything else is an error. Returns the string and its work."""
    s = str(buf[a:j], "utf-8", "surrogatepass")
    return s, _WORK_SURROGATE * _SURROGATE.subn(b"", buf[a:j])[1]


def _text(body: Any, a: int, j: int, budget: Budget, mem_left: int, work_left: int, n: int) -> tuple[str, int, int]:
    """The string in ``body[a:j]``: (the str, its work, its memory). Long strings are
    decoded in pieces (no single C call holds the GIL for long); one that would take
    more than ``budget.max_string_bytes`` (or what is left of the memory or work
    budget) is refused before it is decoded."""
    size = j - a
    # What it will take: 1, 2 or 4 bytes a character, and at most one character a byte
    # (searched piece by piece: no single C call over the whole string).
    width = 1
    for p in range(a, j, _TEXT_PIECE):
        e = min(p + _TEXT_PIECE, j)
        if width < 4 and _FOUR_BYTE.search(body, p, e):
            width = 4
            break
        if width == 1 and _WIDE.search(body, p, e):
            width = 2
    chars = size
    if width > 1 and width * chars > min(budget.max_string_bytes, mem_left):
        chars = 0
        view = memoryview(body)
        for p in range(a, j, _TEXT_PIECE):
            chars += len(bytes(view[p:min(p + _TEXT_PIECE, j)]).translate(None, _CONTINUATION))
        view.release()
    if width * chars > budget.max_string_bytes:
        raise _over(f"a string of {chars} characters would take {width * chars // _MIB} MiB of host memory "
                    f"(at most {budget.max_string_bytes // _MIB} MiB for one string)")
    if width * chars > mem_left:
        raise _over_memory(budget.memory_for(n) - mem_left + width * chars, budget.memory_for(n), n)
    view = memoryview(body)
    work = 0
    try:
        try:
            if size <= _TEXT_PIECE:
                s = str(view[a:j], "utf-8")
            else:
                dec = codecs.getincrementaldecoder("utf-8")("strict")
                s = "".join([dec.decode(view[p:min(p + _TEXT_PIECE, j)], p + _TEXT_PIECE >= j)
                             for p in range(a, j, _TEXT_PIECE)])
        except UnicodeDecodeError:
            # Counted one match at a time (a list of matches would take memory).
            work = _WORK_SURROGATE * sum(1 for _ in _SURROGATE.finditer(body, a, j))
            if work > work_left:
                raise _over_work(budget.work_for(n), n) from None
            dec = codecs.getincrementaldecoder("utf-8")("surrogatepass")
            s = "".join([dec.decode(view[p:min(p + _SURROGATE_PIECE, j)], p + _SURROGATE_PIECE >= j)
                         for p in range(a, j, _SURROGATE_PIECE)])
    finally:
        view.release()
    return s, work, _r16(_getsizeof(s))


#: Keys below this magnitude, str and bytes keys cannot share a full hash with a
#: key of their own kind (ints hash to themselves modulo 2**61 - 1; str and bytes
#: hashes are salted per process).
_SMALL_INT = 1 << 60
_SALTED = sys.flags.hash_randomization != 0
#: A key holding more values than this counts as several in the hash-flooding check.
_LIGHT_KEY = 256


def _heavy_key(values: int, limit: int) -> ProtocolError:
    return _over(f"a dict key or set item holding {values} values (at most {limit}: hashing and "
                 "comparing keys must stay cheap)")


def _check_keys(hashes: dict, target: Any, keys: Any, budget: Budget, nrefs: int, heavy: dict | None,
                step: int) -> int:
    """Refuse keys that would make building ``target`` (a set or dict) slow.

    Keys that cannot collide (salted str and bytes, ints below 2**60, None, booleans)
    are not counted; other keys are counted per container once it could hold more
    than ``max_same_hash`` of them, so a hash is shared by at most that many keys (a
    key holding more than a few hundred values counts as several, once another key
    shares its hash: only keys with one hash are ever compared). ``heavy`` maps the
    stack offsets (``step`` apart for each key) of keys holding many values to their
    count. Returns the bytes the counts took.
    """
    limit = budget.max_same_hash
    if nrefs:
        for k in keys:
            if type(k) not in _DATA_KEYS:
                _check_key(k, 0)
    weights = None
    if heavy is not None:
        weights = {}
        for off, values in heavy.items():
            if off % step == 0:
                if values > budget.max_key_values:
                    raise _heavy_key(values, budget.max_key_values)
                weights[off // step] = values // _LIGHT_KEY
    if not weights:
        kinds = set(map(type, keys))
        if kinds <= _SAFE_TYPES:
            if kinds & _SALTED_TYPES and not _SALTED:
                pass  # str hashes are not salted in this process: count them
            elif int not in kinds:
                return 0
            else:
                ints = keys if len(kinds) == 1 else [k for k in keys if type(k) is int]
                if -_SMALL_INT < min(ints) and max(ints) < _SMALL_INT:
                    return 0
    counts = hashes.get(id(target))
    if counts is None:
        if len(target) + len(keys) <= limit and not weights:
            return 0
        counts = hashes[id(target)] = {}
    size = _getsizeof(counts)
    hs = list(map(hash, keys))
    _count_elements(counts, hs)  # keys with each hash, in the low bits
    if weights:  # ... and what heavy keys add, above them (marked by the None entry)
        counts[None] = 0
        for idx, extra in weights.items():
            counts[hs[idx]] += extra << _EXTRA
    if None in counts:
        for h in set(hs):
            v = counts[h]
            k = v & _KEYS
            if k > limit or k > 1 and k + (v >> _EXTRA) > limit:
                raise _flood(limit)
    elif max(map(counts.__getitem__, hs)) > limit:
        raise _flood(limit)
    return _getsizeof(counts) - size + 32 * len(hs)


_EXTRA = 24
_KEYS = (1 << _EXTRA) - 1


def _flood(limit: int) -> ProtocolError:
    return ProtocolError(f"message over budget: more than {limit} keys of one dict or set share a hash "
                         "(a hash-flooding pattern; a key holding many values counts as several)")


_SAFE_TYPES = frozenset({str, bytes, int, bool, type(None)})
_SALTED_TYPES = frozenset({str, bytes})


def _check_key(key: Any, level: int) -> None:
    t = type(key)
    if t in _DATA_KEYS:
        return
    if t is tuple or t is frozenset:
        for x in key:
            _check_key(x, level + 1)
        return
    if t.__hash__ is object.__hash__ and t.__eq__ is object.__eq__:
        return  # compared and hashed by identity
    fields = _value_fields(t)
    if fields is not None and level < MAX_DEPTH:
        for f in fields:
            _check_key(getattr(key, f), level + 1)
        return
    raise ProtocolError(
        f"a {t.__name__} from the host, which has its own __hash__ or __eq__, cannot be a "
        "dict key or set item in a message from the sandbox"
    )


def _value_fields(t: type) -> tuple | None:
    from ._expose import value_type_of

    vt = value_type_of(t)
    return None if vt is None else vt.fields


# Runs of one fixed-width opcode after a MARK are unpacked in batches (C speed).
_RUNS = {
    _BININT1: 2,
    _BININT2: 3,
    _BININT: 5,
    _BINFLOAT: 9,
}
#: Runs shorter than this are left to the main loop (a batch costs more to set up).
_MIN_RUN = 12
_RUN_PREFIX = {op: bytes((op,)) * _MIN_RUN for op in _RUNS}


def _run(buf: Any, i: int, seglen: int, stack: list, mem: int, objs: int) -> tuple[int, int, int]:
    """Push the run of one fixed-width opcode starting at ``buf[i]``; returns the new
    (i, mem, objs). A run ends at the end of its frame."""
    op = buf[i]
    width = _RUNS[op]
    opbyte = bytes((op,))
    while True:
        window = buf[i:min(seglen, i + width * _RUN):width]
        count = len(window) - len(window.lstrip(opbyte))
        if i + count * width > seglen:  # the last opcode's argument is cut off
            count -= 1
        if count <= 0:
            return i, mem, objs
        if width == 2:
            values = list(buf[i + 1:i + 2 * count:2])
        elif width == 3:
            values = _gather(buf, i, count, 3, "H", False)
            if min(values) < 256:
                raise _bad(f"BININT2 of {min(values)} (the pickler writes BININT1)")
            mem += _SZ_INT * count
            objs += count
        elif width == 5:
            values = _gather(buf, i, count, 5, "i", False)
            mem += _SZ_INT * count
            objs += count
        else:
            values = _gather(buf, i, count, 9, "d", True)
            mem += _SZ_FLOAT * count
            objs += count
        stack.extend(values)
        i += count * width
        if count < _RUN:
            return i, mem, objs
