"""The host's decoder for bodies from the sandbox: exact, iterative and budgeted.

The sandbox writes its bodies with CPython's C pickler in fast mode (protocol 5, no
memo), so a body is a sequence of pickle opcodes. This module is the only code on the
host that reads those bytes, and it builds the objects itself: there is no scan
followed by a call into another unpickler, so nothing here has to model what another
decoder would do. It accepts exactly the opcodes that pickler emits for plain data
(``None``, ``bool``, ``int``, ``float``, ``str``, ``bytes``, ``bytearray``, ``tuple``,
``list``, ``dict``, ``set`` and persistent ids) and refuses every other one, naming
it. Frozensets come as a record (``("v", "frozenset", items)``), built here: the C
pickler's fast mode miscounts its nesting on every frozenset it writes.

Cost is part of the attack surface, so the decoder charges a :class:`Budget` as it goes
(not afterwards) and raises :class:`~capbridge.ProtocolError` the moment a message
goes over:

* **nesting depth** - every value on the stack carries its depth, so a deep value is
  refused before anything (hashing, comparison, repr) can recurse into it;
* **host memory** - what each object really occupies (an empty set is 216 bytes, a
  one-item dict 224), container growth, and the decoder's own stack, against
  ``ratio`` times the frame size (at least ``floor``), capped by ``max_bytes``;
* **objects created**, **keys** put into dicts and sets, **int size** (bytes of one
  int), and a hook that stops decoding when the sandbox has been killed meanwhile;
* **hash flooding** - ints, floats, tuples and frozensets hash the same way in every
  process, so a sandbox could send thousands of keys with one hash and make each
  insertion scan all the others. Every key's hash is counted per container, and more
  than ``max_same_hash`` keys with one full hash is refused; that keeps building any
  dict or set linear.

No single C call works on more than a bounded slice of the body: long strings are
decoded in pieces, and runs of small numbers are unpacked in batches, so the GIL is
released between steps and other sandboxes' calls go on.

References (persistent ids) are built as plain tuples and handed to the ``ref``
callback the moment they are complete; it checks them against the connection's own
tables. Opcodes that add items (APPEND, SETITEM, ADDITEMS, ...) only ever act on a
``list``, ``dict`` or ``set`` of exactly that type, which only this decoder makes:
they can never reach a host object.
"""

from __future__ import annotations

import codecs
import struct
import sys
TYPE_CHECKING = False
if TYPE_CHECKING:  # (typing is not imported at run time: it costs start-up)
    from typing import Any, Callable

from ._errors import ProtocolError

__all__ = ["Budget", "decode", "small_answer", "small_call", "NOT_SMALL", "MAX_DEPTH", "OPCODES"]

#: Deepest nesting of containers accepted from the sandbox.
MAX_DEPTH = 100

_MIB = 1024 * 1024


class Budget:
    """What decoding one message may cost the host.

    ``ratio`` and ``floor``: decoded objects may take ``ratio`` times the frame's size
    in host memory, and at least ``floor`` bytes; ``max_bytes`` caps that
    (``Limits.max_decoded_mb``). ``max_objects``: objects created (small ints, one-
    character strings, ``None`` and the booleans are shared and not counted).
    ``max_keys``: dict and set entries in one message. ``max_int_bytes``: the size of
    one int in bytes (about 2.4 decimal digits per byte). ``max_same_hash``: keys of
    one container with the same full hash. ``stop``: called every
    ``check_every`` bytes; returns an exception to raise when decoding must end (the
    sandbox was killed meanwhile), else None.
    """

    __slots__ = ("ratio", "floor", "max_bytes", "max_objects", "max_keys", "max_int_bytes",
                 "max_same_hash", "max_depth", "stop", "check_every")

    def __init__(self, *, ratio: int = 15, floor: int = 16 * _MIB, max_bytes: int = 512 * _MIB,
                 max_objects: int = 8_000_000, max_keys: int = 4_000_000, max_int_bytes: int = 8192,
                 max_same_hash: int = 8, max_depth: int = MAX_DEPTH,
                 stop: Callable[[], BaseException | None] | None = None,
                 check_every: int = 65536) -> None:
        self.ratio = ratio
        self.floor = floor
        self.max_bytes = max_bytes
        self.max_objects = max_objects
        self.max_keys = max_keys
        self.max_int_bytes = max_int_bytes
        self.max_same_hash = max_same_hash
        self.max_depth = max_depth
        self.stop = stop
        self.check_every = check_every

    def memory_for(self, frame_size: int) -> int:
        """Bytes of host memory a message of ``frame_size`` bytes may decode into."""
        return min(self.max_bytes, max(self.floor, self.ratio * frame_size))


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

#: Name of every opcode byte, for error messages.
_NAMES = ["0x%02x" % b for b in range(256)]
try:
    import pickletools as _pt

    for _op in _pt.opcodes:
        _NAMES[ord(_op.code)] = _op.name
    del _op, _pt
except ImportError:  # pragma: no cover
    pass

OPCODES = frozenset({
    _PROTO, _FRAME, _STOP, _MARK, _NONE, _TRUE, _FALSE, _BININT, _BININT1, _BININT2, _LONG1,
    _LONG4, _BINFLOAT, _SHORT_UNICODE, _UNICODE, _SHORT_BYTES, _BYTES, _BYTEARRAY8,
    _EMPTY_TUPLE, _TUPLE1, _TUPLE2, _TUPLE3, _TUPLE, _EMPTY_LIST, _APPEND, _APPENDS,
    _EMPTY_DICT, _SETITEM, _SETITEMS, _EMPTY_SET, _ADDITEMS, _BINPERSID,
})

# Real sizes of what the decoder makes (CPython's, read at import).
_getsizeof = sys.getsizeof
_SZ_INT = _getsizeof(1 << 40)  # a 2-digit int: what BININT and BININT2 can make
_SZ_FLOAT = _getsizeof(1.0)
_SZ_LIST = _getsizeof([])
_SZ_DICT = _getsizeof({})
_SZ_SET = _getsizeof(set())
_SZ_TUPLE = _getsizeof(())
_SZ_BYTES = _getsizeof(b"")
_SZ_BYTEARRAY = _getsizeof(bytearray(1))
#: What the decoder's own bookkeeping costs per container on its stack (a stack slot,
#: the position and depth slots, and the position's int).
_BOOK = 8 + 16 + 32
#: Items unpacked per step in a run of fixed-width numbers.
_RUN = 1024
#: Strings longer than this are decoded in pieces of this size.
_TEXT_PIECE = 1 << 22

#: Key types whose hashing and comparison is data-only (values the decoder or the value
#: records make).
_DATA_KEYS = frozenset({str, bytes, int, float, bool, type(None), complex})


def _add_data_keys(*types: type) -> None:
    global _DATA_KEYS
    _DATA_KEYS = _DATA_KEYS | frozenset(types)


def _stdlib_keys() -> None:
    import datetime
    import decimal
    import fractions
    import uuid

    _add_data_keys(datetime.date, datetime.time, datetime.datetime, datetime.timedelta,
                   datetime.timezone, decimal.Decimal, fractions.Fraction, uuid.UUID)


_stdlib_keys()

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


def _bad(what: str) -> ProtocolError:
    return ProtocolError(f"malformed body: {what}")


def _over(what: str) -> ProtocolError:
    return ProtocolError(f"message over budget: {what}")


def _forbidden(op: int, at: int) -> ProtocolError:
    return ProtocolError(f"forbidden pickle opcode {_NAMES[op]} (0x{op:02x}) at offset {at}")


def _text(body: Any, start: int, end: int) -> str:
    if end - start <= _TEXT_PIECE:
        return str(body[start:end], "utf-8", "surrogatepass")
    # In pieces, so no single C call holds the GIL for long.
    dec = codecs.getincrementaldecoder("utf-8")("surrogatepass")
    view = memoryview(body)
    parts = [dec.decode(view[p:min(p + _TEXT_PIECE, end)], p + _TEXT_PIECE >= end)
             for p in range(start, end, _TEXT_PIECE)]
    return "".join(parts)


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
# each opcode as decode(), and return None for anything else (decode() then reads
# the body and names what is wrong). Small by construction: no budget can be reached.


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
        return str(body[i + 2:j], "utf-8", "surrogatepass"), j
    if op == 0x4A:
        return _unpack_i(body, i + 1)[0], i + 5
    if op == 0x4E:
        return None, i + 1
    if op == 0x88:
        return True, i + 1
    if op == 0x89:
        return False, i + 1
    if op == 0x4D:
        return _unpack_H(body, i + 1)[0], i + 3
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


_NO: Any = object()


def small_answer(body: Any, start: int, n: int) -> Any:
    """The value of a payload that is one scalar, or ``NOT_SMALL`` (``n`` = len(body))."""
    try:
        if body[start] != 0x80 or body[start + 1] != 5:
            return NOT_SMALL
        i = start + 2
        op = body[i]
        if op == 0x95:  # FRAME: it must cover exactly the rest
            if _unpack_Q(body, i + 1)[0] != n - i - 9:
                return NOT_SMALL
            i += 9
            op = body[i]
        if op == 0x4B:
            value: Any = body[i + 1]
            i += 2
        elif op == 0x4E and i + 2 == n:
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


#: Names kept per connection by small_call (a hostile peer can only fill it).
MAX_NAMES = 512


def small_call(body: Any, start: int, n: int, names: dict | None = None) -> tuple | None:
    """``(name, args, {})`` of a CALL payload whose name is a str or None and whose
    arguments are a few scalars and no keywords; None for any other payload
    (``n`` = len(body)). ``names`` caches decoded names (bytes -> str): a method
    name repeats from call to call, and the cached str keeps its hash."""
    try:
        if body[start] != 0x80 or body[start + 1] != 5:
            return None
        i = start + 2
        op = body[i]
        if op == 0x95:  # FRAME: it must cover exactly the rest
            if _unpack_Q(body, i + 1)[0] != n - i - 9:
                return None
            i += 9
            op = body[i]
        if op == 0x8C:
            j = i + 2 + body[i + 1]
            if j > n:
                return None
            raw = body[i + 2:j]
            name: Any = names.get(raw) if names is not None and type(raw) is bytes else None
            if name is None:
                name = str(raw, "utf-8", "surrogatepass")
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
                    items.append(str(body[i + 2:j], "utf-8", "surrogatepass"))
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
            if not marked and len(items) != op - 0x84:
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


def decode(body: Any, ref: Callable[[tuple], Any], budget: Budget = DEFAULT_BUDGET, start: int = 0) -> Any:
    """Build the value the pickle in ``body[start:]`` holds, or raise :class:`ProtocolError`.

    ``ref`` turns a persistent id (a tuple built by this decoder) into the object it
    stands for, or raises. The memory budget is reckoned from ``len(body)``.
    """
    n = len(body)
    if n - start < 3 or body[start] != 0x80 or body[start + 1] != 5:
        raise _bad("not a pickle of protocol 5")
    if body[n - 1] != 0x2E:
        raise _bad("truncated pickle, or bytes after STOP (the body does not end with STOP)")
    stack: list = []
    push = stack.append
    # Containers on the stack: their positions (ascending) and nesting depths. Scalars
    # have depth 0 and no entry, so the common pushes cost nothing extra.
    cpos: list = []
    cdep: list = []
    marks: list = []
    mem = objs = keys = nrefs = 0
    checkpoint = start + budget.check_every
    frame_end = i = start + 2
    hashes: dict = {}  # id(container) -> {hash: count}, for containers with many keys
    try:
        while True:
            op = body[i]
            # -- scalars, in rough order of how often they come ----------------------
            if op == 0x4B:
                push(body[i + 1])
                i += 2
            elif op == 0x8C:
                j = i + 2 + body[i + 1]
                if j > n:
                    raise _bad("truncated pickle")
                s = str(body[i + 2:j], "utf-8", "surrogatepass")
                push(s)
                if j - i > 3:  # one-character strings are shared
                    mem += _getsizeof(s)
                    objs += 1
                i = j
            elif op == 0x4A:
                push(_unpack_i(body, i + 1)[0])
                mem += _SZ_INT
                objs += 1
                i += 5
            elif op == 0x87 or op == 0x86 or op == 0x85:
                k = op - 0x84
                m = len(stack) - k
                if m < (marks[-1] if marks else 0):
                    raise _bad("stack underflow")
                t = tuple(stack[m:])
                del stack[m:]
                d = 1
                if cpos and cpos[-1] >= m:
                    while cpos and cpos[-1] >= m:
                        cpos.pop()
                        x = cdep.pop() + 1
                        mem -= _BOOK
                        if x > d:
                            d = x
                    if d > budget.max_depth:
                        raise _too_deep(budget.max_depth)
                cpos.append(m)
                cdep.append(d)
                push(t)
                mem += _SZ_TUPLE + 8 * k + _BOOK
                objs += 1
                i += 1
            elif op == 0x4E:
                push(None)
                i += 1
            elif op == 0x2E:
                if i != n - 1:
                    raise _bad(f"{n - i - 1} bytes after STOP")
                if len(stack) != 1 or marks:
                    raise _bad("STOP with " + ("an open MARK" if marks else f"{len(stack)} values on the stack"))
                return stack[0]
            elif op == 0x28:
                marks.append(len(stack))
                i += 1
                w = _RUNS.get(body[i])
                if w is not None and i + _MIN_RUN * w < n and body[i + _MIN_RUN * w] == body[i] and \
                        body[i:i + _MIN_RUN * w:w] == _RUN_PREFIX[body[i]]:
                    i, mem, objs = _run(body, i, stack, mem, objs)
            elif op == 0x29:
                push(())
                i += 1
            elif op == 0x88:
                push(True)
                i += 1
            elif op == 0x89:
                push(False)
                i += 1
            elif op == 0x4D:
                v = _unpack_H(body, i + 1)[0]
                push(v)
                if v > 256:
                    mem += _SZ_INT
                    objs += 1
                i += 3
            elif op == 0x47:
                push(_unpack_d(body, i + 1)[0])
                mem += _SZ_FLOAT
                objs += 1
                i += 9
            elif op == 0x95:
                if i < frame_end:
                    raise _bad(f"FRAME at offset {i} inside the previous frame")
                frame_end = i + 9 + _unpack_Q(body, i + 1)[0]
                i += 9
                if frame_end > n:
                    raise _bad("truncated pickle (FRAME longer than the body)")
            # -- containers -------------------------------------------------------
            elif op == 0x5D or op == 0x7D or op == 0x8F:
                cpos.append(len(stack))
                cdep.append(1)
                if op == 0x5D:
                    push([])
                    mem += _SZ_LIST + _BOOK
                elif op == 0x7D:
                    push({})
                    mem += _SZ_DICT + _BOOK
                else:
                    push(set())
                    mem += _SZ_SET + _BOOK
                objs += 1
                i += 1
                if mem > budget.memory_for(n):
                    raise _over_memory(mem, budget.memory_for(n), n)
            elif op == 0x65 or op == 0x75 or op == 0x90 or op == 0x74:
                if not marks:
                    raise _bad(f"{_NAMES[op]} without MARK")
                m = marks.pop()
                items = stack[m:]
                k = len(items)
                d = 1
                while cpos and cpos[-1] >= m:
                    cpos.pop()
                    x = cdep.pop() + 1
                    mem -= _BOOK
                    if x > d:
                        d = x
                if d > budget.max_depth:
                    raise _too_deep(budget.max_depth)
                if op == 0x74:
                    del stack[m:]
                    obj: Any = tuple(items)
                    mem += _SZ_TUPLE + 8 * k + _BOOK
                    cpos.append(m)
                    cdep.append(d)
                    if k:
                        objs += 1
                    push(obj)
                else:
                    if m < 1 or (marks and marks[-1] >= m) or not cpos or cpos[-1] != m - 1:
                        raise _bad(f"{_NAMES[op]} with nothing to add to")
                    target = stack[m - 1]
                    before = _getsizeof(target)
                    if op == 0x65:
                        if type(target) is not list:
                            raise _bad(f"APPENDS to a {type(target).__name__}")
                        target.extend(items)
                    else:
                        if op == 0x75:
                            if type(target) is not dict:
                                raise _bad(f"SETITEMS on a {type(target).__name__}")
                            if k & 1:
                                raise _bad("SETITEMS with an odd number of items")
                            ks = items[0::2]
                            mem += _check_keys(hashes, target, ks, budget.max_same_hash, nrefs)
                            keys += k >> 1
                            target.update(zip(ks, items[1::2]))
                        else:
                            if type(target) is not set:
                                raise _bad(f"ADDITEMS to a {type(target).__name__}")
                            mem += _check_keys(hashes, target, items, budget.max_same_hash, nrefs)
                            keys += k
                            target.update(items)
                    mem += _getsizeof(target) - before
                    del stack[m:]
                    if d > cdep[-1]:
                        cdep[-1] = d
                limit = budget.memory_for(n)
                if mem + 8 * k > limit:
                    raise _over_memory(mem + 8 * k, limit, n)
                if keys > budget.max_keys:
                    raise _over(f"more than {budget.max_keys} dict and set entries")
                i += 1
            elif op == 0x61 or op == 0x73:
                k = 1 if op == 0x61 else 2
                m = len(stack) - k
                if m - 1 < (marks[-1] if marks else 0) or not cpos:
                    raise _bad(f"{_NAMES[op]} with nothing to add to")
                d = 1
                while cpos[-1] >= m:
                    cpos.pop()
                    x = cdep.pop() + 1
                    mem -= _BOOK
                    if x > d:
                        d = x
                    if not cpos:
                        raise _bad(f"{_NAMES[op]} with nothing to add to")
                if d > budget.max_depth:
                    raise _too_deep(budget.max_depth)
                if cpos[-1] != m - 1:
                    raise _bad(f"{_NAMES[op]} with nothing to add to")
                target = stack[m - 1]
                before = _getsizeof(target)
                if op == 0x61:
                    if type(target) is not list:
                        raise _bad(f"APPEND to a {type(target).__name__}")
                    target.append(stack[-1])
                else:
                    if type(target) is not dict:
                        raise _bad(f"SETITEM on a {type(target).__name__}")
                    key = stack[-2]
                    mem += _check_keys(hashes, target, (key,), budget.max_same_hash, nrefs)
                    keys += 1
                    target[key] = stack[-1]
                mem += _getsizeof(target) - before
                del stack[m:]
                if d > cdep[-1]:
                    cdep[-1] = d
                i += 1
            elif op == 0x51:
                if len(stack) <= (marks[-1] if marks else 0):
                    raise _bad("stack underflow")
                pid = stack[-1]
                if type(pid) is not tuple or not pid:
                    raise ProtocolError("malformed reference")
                if len(pid) == 3 and pid[0] == "v" and pid[1] == "frozenset":
                    # A frozenset (the sandbox's pickler writes them as records).
                    items = pid[2]
                    if type(items) is not tuple:
                        raise ProtocolError("bad frozenset record")
                    mem += _check_keys(hashes, None, items, budget.max_same_hash, nrefs)
                    keys += len(items)
                    obj = frozenset(items)
                    mem += _getsizeof(obj)
                    stack[-1] = obj
                else:
                    stack[-1] = ref(pid)  # keeps the id tuple's depth entry
                    nrefs += 1
                    mem += 256
                objs += 1
                i += 1
            # -- long scalars -------------------------------------------------------
            elif op == 0x58 or op == 0x42 or op == 0x43 or op == 0x96:
                if op == 0x43:
                    start = i + 2
                    j = start + body[i + 1]
                elif op == 0x96:
                    start = i + 9
                    j = start + _unpack_Q(body, i + 1)[0]
                else:
                    start = i + 5
                    j = start + _unpack_I(body, i + 1)[0]
                if j > n:
                    raise _bad("truncated pickle")
                size = j - start
                if op == 0x58:
                    obj = _text(body, start, j)
                    mem += _getsizeof(obj)
                elif op == 0x96:
                    obj = bytearray(memoryview(body)[start:j])
                    mem += _SZ_BYTEARRAY + size
                else:
                    obj = bytes(memoryview(body)[start:j]) if size > 64 else bytes(body[start:j])
                    mem += _SZ_BYTES + size
                push(obj)
                objs += 1
                i = j
                if mem > budget.memory_for(n):
                    raise _over_memory(mem, budget.memory_for(n), n)
            elif op == 0x8A or op == 0x8B:
                if op == 0x8A:
                    start = i + 2
                    size = body[i + 1]
                else:
                    start = i + 5
                    size = _unpack_I(body, i + 1)[0]
                    if size > budget.max_int_bytes:
                        raise _over(f"an int of {size} bytes (at most {budget.max_int_bytes})")
                j = start + size
                if j > n:
                    raise _bad("truncated pickle")
                push(_from_bytes(body[start:j], "little", signed=True))
                mem += _SZ_INT + size
                objs += 1
                i = j
            elif op == 0x80:
                raise _bad(f"PROTO at offset {i}")
            else:
                raise _forbidden(op, i)
            if i >= checkpoint:
                checkpoint = i + budget.check_every
                _checkpoint(budget, n, mem + 8 * len(stack) + 48 * len(cpos), objs)
    except IndexError:
        if i >= n - 1:
            raise _bad("truncated pickle") from None
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


def _checkpoint(budget: Budget, n: int, mem: int, objs: int) -> None:
    limit = budget.memory_for(n)
    if mem > limit:
        raise _over_memory(mem, limit, n)
    if objs > budget.max_objects:
        raise _over(f"more than {budget.max_objects} objects")
    stop = budget.stop
    if stop is not None:
        exc = stop()
        if exc is not None:
            raise exc


def _too_deep(limit: int) -> ProtocolError:
    return ProtocolError(f"message nested deeper than {limit} levels")


def _over_memory(mem: int, limit: int, n: int) -> ProtocolError:
    return _over(f"decoding it would take more than {limit // 1024} KiB of host memory "
                 f"(it reached {mem // 1024} KiB from a {n}-byte frame; see Limits.max_decoded_mb)")


#: Keys below this magnitude, str and bytes keys cannot share a full hash with a
#: key of their own kind (ints hash to themselves modulo 2**61 - 1; str and bytes
#: hashes are salted per process).
_SMALL_INT = 1 << 60
_SALTED = sys.flags.hash_randomization != 0


def _check_keys(hashes: dict, target: Any, keys: Any, limit: int, nrefs: int) -> int:
    """Refuse a container that would get more than about ``limit`` keys with one hash.

    ``target`` is the set or dict the keys go into (None for a new frozenset). Keys
    that cannot collide (salted str and bytes, ints below 2**60, None, booleans) are
    not counted; other keys are counted per container once it could hold more than
    ``limit`` of them, so a hash is shared by at most ``2 * limit + 2`` keys. Returns
    the bytes the counts took.
    """
    if nrefs:
        for k in keys:
            if type(k) not in _DATA_KEYS:
                _check_key(k, 0)
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
    counts = hashes.get(id(target)) if target is not None else None
    if counts is None:
        if (len(target) if target is not None else 0) + len(keys) <= limit:
            return 0
        counts = {}
        if target is not None:
            hashes[id(target)] = counts
    size = _getsizeof(counts)
    hs = list(map(hash, keys))
    _count_elements(counts, hs)
    if max(map(counts.__getitem__, hs)) > limit:
        raise ProtocolError(
            f"message over budget: more than {limit} keys of one dict or set share a hash "
            "(a hash-flooding pattern)"
        )
    return _getsizeof(counts) - size + 32 * len(hs)


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
    _NONE: 1,
    _TRUE: 1,
    _FALSE: 1,
}
_RUN_CONST = {_NONE: None, _TRUE: True, _FALSE: False}
#: Runs shorter than this are left to the main loop (a batch costs more to set up).
_MIN_RUN = 12
_RUN_PREFIX = {op: bytes((op,)) * _MIN_RUN for op in _RUNS}


def _run(body: Any, i: int, stack: list, mem: int, objs: int) -> tuple[int, int, int]:
    """Push the run of one fixed-width opcode starting at ``i``; returns the new (i, mem, objs)."""
    op = body[i]
    width = _RUNS[op]
    opbyte = bytes((op,))
    n = len(body) - 1  # the STOP byte ends every run
    while True:
        window = body[i:min(n, i + width * _RUN):width]
        count = len(window) - len(window.lstrip(opbyte))
        if i + count * width > n:  # the last opcode's argument is cut off
            count -= 1
        if count <= 0:
            return i, mem, objs
        if width == 2:
            values = list(body[i + 1:i + 2 * count:2])
        elif width == 1:
            values = [_RUN_CONST[op]] * count
        elif width == 3:
            values = _gather(body, i, count, 3, "H", False)
            mem += _SZ_INT * count
            objs += count
        elif width == 5:
            values = _gather(body, i, count, 5, "i", False)
            mem += _SZ_INT * count
            objs += count
        else:
            values = _gather(body, i, count, 9, "d", True)
            mem += _SZ_FLOAT * count
            objs += count
        stack.extend(values)
        i += count * width
        if count < _RUN:
            return i, mem, objs
