"""Turning messages into bodies and back.

Two directions, two levels of trust:

* **Towards the sandbox** (host encodes, sandbox decodes) the host is trusted, so the
  body is an ordinary protocol-5 pickle; ``Sandbox.call`` uses cloudpickle to ship a
  function by value.
* **Towards the host** (sandbox encodes, host decodes) every byte is hostile. The
  sandbox pickles without a memo (``Pickler.fast``), and the host checks each body
  with :func:`scan` before unpickling: only data opcodes are allowed (no globals, no
  REDUCE/BUILD/NEWOBJ, no memo, no extension registry). References and non-builtin
  values arrive as persistent ids that decode to inert :class:`Inert` placeholders;
  after decoding, :func:`resolve` checks depth and swaps each placeholder for what
  the connection's own tables say it is. No pickle opcode ever touches a live host
  object.

Persistent ids (all plain tuples):

* ``("c", export_id, iface_key, descriptor_or_None)`` - a capability exported by the
  sender; the descriptor comes with the first reference to that interface.
* ``("r", export_id)`` - one of the *receiver's* exports, handed back.
* ``("v", kind, payload)`` - a by-value object that pickle cannot express with data
  opcodes alone (complex, datetime types, Decimal, Fraction, UUID, value types).
"""

from __future__ import annotations

import datetime as _dt
import decimal
import fractions
import io
import pickle
import pickletools
import re
import uuid
from typing import Any, Callable

from ._errors import CapabilityError, ProtocolError, safe_repr

__all__ = [
    "scan",
    "Inert",
    "resolve",
    "PLAIN_TYPES",
    "STDLIB_VALUE_TYPES",
    "encode_value_record",
    "decode_value_record",
    "MAX_DEPTH",
]

#: Deepest nesting of containers accepted from the sandbox.
MAX_DEPTH = 100

#: Types pickle writes with data opcodes only.
PLAIN_TYPES = frozenset(
    {type(None), bool, int, float, str, bytes, bytearray, list, tuple, dict, set, frozenset}
)
_SCALARS = frozenset({type(None), bool, int, float, str, bytes, bytearray, complex})

#: Standard-library types that cross by value.
STDLIB_VALUE_TYPES = frozenset(
    {
        complex,
        _dt.date,
        _dt.time,
        _dt.datetime,
        _dt.timedelta,
        _dt.timezone,
        decimal.Decimal,
        fractions.Fraction,
        uuid.UUID,
    }
)

# --------------------------------------------------------------------------- scanner

_ALLOWED_OPCODES = """
PROTO FRAME STOP MARK POP POP_MARK NONE NEWTRUE NEWFALSE
BININT BININT1 BININT2 LONG1 LONG4 BINFLOAT
SHORT_BINUNICODE BINUNICODE BINUNICODE8 SHORT_BINBYTES BINBYTES BINBYTES8 BYTEARRAY8
EMPTY_TUPLE TUPLE TUPLE1 TUPLE2 TUPLE3 EMPTY_LIST APPEND APPENDS LIST
EMPTY_DICT SETITEM SETITEMS DICT EMPTY_SET ADDITEMS FROZENSET BINPERSID MEMOIZE
""".split()

# Per opcode byte: None = forbidden; int >= 0 = fixed argument size;
# ("len", n) = argument is an n-byte little-endian length followed by that many bytes.
_FORBIDDEN = -1
_LEN1, _LEN4, _LEN8 = -2, -3, -5
_ARG = [_FORBIDDEN] * 256
_NAMES = ["?"] * 256
for _op in pickletools.opcodes:
    _code = ord(_op.code)
    _NAMES[_code] = _op.name
    if _op.name not in _ALLOWED_OPCODES:
        continue
    _n = _op.arg.n if _op.arg is not None else 0
    if _n == pickletools.TAKEN_FROM_ARGUMENT1:
        _ARG[_code] = _LEN1
    elif _n in (pickletools.TAKEN_FROM_ARGUMENT4, pickletools.TAKEN_FROM_ARGUMENT4U):
        _ARG[_code] = _LEN4
    elif _n == pickletools.TAKEN_FROM_ARGUMENT8U:
        _ARG[_code] = _LEN8
    else:
        assert _n >= 0, _op.name
        _ARG[_code] = _n
_BINPERSID = ord("Q")
_STOP = ord(".")
_PROTO = 0x80
_PERSID = -6
_ARG[_STOP] = _FORBIDDEN  # handled in the slow branch: it must be the last byte
_ARG[_BINPERSID] = _PERSID
# Fixed sizes are stored as 1 + argument size (the step to the next opcode).
_ARG_T = tuple(k + 1 if k >= 0 else k for k in _ARG)


def scan(body: bytes) -> bool:
    """Check that ``body`` is a pickle made of allowed data opcodes only.

    Returns whether it holds persistent ids. Raises :class:`ProtocolError` naming
    the first forbidden opcode, or a truncated or trailing-garbage body. Bodies of
    :data:`MAX_DEPTH` bytes or more are also checked for nesting depth *before*
    they are unpickled (the unpickler hashes dict keys and set items recursively
    in C, so a deep tuple there would crash the host).
    """
    n = len(body)
    if n < 3 or body[0] != _PROTO:
        raise ProtocolError("malformed body: not a pickle of protocol 2 or newer")
    if n >= MAX_DEPTH:
        return _scan_nested(body)
    arg = _ARG_T
    i = 0
    has_pid = False
    from_bytes = int.from_bytes
    while i < n:
        k = arg[body[i]]
        if k > 0:
            i += k
            continue
        op = body[i]
        if k == _FORBIDDEN:
            if op == _STOP:
                if i != n - 1:
                    raise ProtocolError(f"malformed body: {n - i - 1} bytes after STOP")
                return has_pid
            raise ProtocolError(
                f"forbidden pickle opcode {_NAMES[op]} (0x{op:02x}) at offset {i}"
            )
        if k == _PERSID:
            has_pid = True
            i += 1
            continue
        width = 1 if k == _LEN1 else 4 if k == _LEN4 else 8
        if i + 1 + width > n:
            break
        size = from_bytes(body[i + 1 : i + 1 + width], "little")
        i += 1 + width + size
    raise ProtocolError("malformed body: truncated pickle")



# Opcode classes for the nesting simulation of large bodies.
_K_SCALAR, _K_EMPTY, _K_MARK, _K_TUPLEN, _K_FROMMARK, _K_APPEND, _K_SETITEM = range(1, 8)
_K_INTO_MARK, _K_POP, _K_POPMARK, _K_PERSID, _K_NOTHING = range(8, 13)
_KIND = [0] * 256
for _name, _kind in {
    "NONE": _K_SCALAR, "NEWTRUE": _K_SCALAR, "NEWFALSE": _K_SCALAR, "BININT": _K_SCALAR,
    "BININT1": _K_SCALAR, "BININT2": _K_SCALAR, "LONG1": _K_SCALAR, "LONG4": _K_SCALAR,
    "BINFLOAT": _K_SCALAR, "SHORT_BINUNICODE": _K_SCALAR, "BINUNICODE": _K_SCALAR,
    "BINUNICODE8": _K_SCALAR, "SHORT_BINBYTES": _K_SCALAR, "BINBYTES": _K_SCALAR,
    "BINBYTES8": _K_SCALAR, "BYTEARRAY8": _K_SCALAR,
    "EMPTY_TUPLE": _K_EMPTY, "EMPTY_LIST": _K_EMPTY, "EMPTY_DICT": _K_EMPTY, "EMPTY_SET": _K_EMPTY,
    "MARK": _K_MARK, "TUPLE1": _K_TUPLEN, "TUPLE2": _K_TUPLEN, "TUPLE3": _K_TUPLEN,
    "TUPLE": _K_FROMMARK, "LIST": _K_FROMMARK, "DICT": _K_FROMMARK, "FROZENSET": _K_FROMMARK,
    "APPEND": _K_APPEND, "SETITEM": _K_SETITEM,
    "APPENDS": _K_INTO_MARK, "SETITEMS": _K_INTO_MARK, "ADDITEMS": _K_INTO_MARK,
    "POP": _K_POP, "POP_MARK": _K_POPMARK, "BINPERSID": _K_PERSID,
    "MEMOIZE": _K_NOTHING, "FRAME": _K_NOTHING, "PROTO": _K_NOTHING,
}.items():
    _KIND[ord(next(o.code for o in pickletools.opcodes if o.name == _name))] = _kind
_KIND_T = tuple(_KIND)
_TUPLE_N = {0x85: 1, 0x86: 2, 0x87: 3}


def _scan_nested(body: bytes) -> bool:
    """:func:`scan` plus a simulation of the unpickler's stack that tracks how deep
    every value nests; refuses anything deeper than :data:`MAX_DEPTH`."""
    n = len(body)
    arg, kinds = _ARG_T, _KIND_T
    stack: list[int] = []
    marks: list[int] = []
    limit = MAX_DEPTH
    has_pid = False
    from_bytes = int.from_bytes
    i = 0
    try:
        while i < n:
            op = body[i]
            k = arg[op]
            kind = kinds[op]
            if k > 0:
                i += k
            elif k == _FORBIDDEN:
                if op == _STOP:
                    if i != n - 1:
                        raise ProtocolError(f"malformed body: {n - i - 1} bytes after STOP")
                    return has_pid
                raise ProtocolError(f"forbidden pickle opcode {_NAMES[op]} (0x{op:02x}) at offset {i}")
            elif k == _PERSID:
                has_pid = True
                i += 1
            else:
                width = 1 if k == _LEN1 else 4 if k == _LEN4 else 8
                if i + 1 + width > n:
                    break
                i += 1 + width + from_bytes(body[i + 1 : i + 1 + width], "little")
            if kind == _K_SCALAR:
                stack.append(0)
                continue
            if kind == _K_NOTHING:
                continue
            if kind == _K_EMPTY:
                stack.append(1)
                continue
            if kind == _K_MARK:
                marks.append(len(stack))
                continue
            if kind == _K_TUPLEN:
                count = _TUPLE_N[op]
                if len(stack) < count:
                    raise ProtocolError("malformed body: stack underflow")
                d = max(stack[-count:]) + 1
                del stack[-count:]
                stack.append(d)
            elif kind == _K_FROMMARK:
                m = marks.pop()
                d = max(stack[m:], default=0) + 1
                del stack[m:]
                stack.append(d)
            elif kind == _K_APPEND:
                v = stack.pop()
                d = stack[-1] = max(stack[-1], v + 1)
            elif kind == _K_SETITEM:
                v = stack.pop()
                key = stack.pop()
                d = stack[-1] = max(stack[-1], key + 1, v + 1)
            elif kind == _K_INTO_MARK:
                m = marks.pop()
                items = stack[m:]
                del stack[m:]
                d = stack[-1] = max(stack[-1], max(items, default=0) + 1)
            elif kind == _K_POP:
                stack.pop()
                continue
            elif kind == _K_POPMARK:
                del stack[marks.pop():]
                continue
            elif kind == _K_PERSID:
                d = stack.pop() + 1
                stack.append(d)
            else:  # pragma: no cover - every allowed opcode has a kind
                raise ProtocolError(f"unexpected opcode {_NAMES[op]}")
            if d > limit:
                raise ProtocolError(f"message nested deeper than {limit} levels")
    except IndexError:
        raise ProtocolError("malformed body: stack underflow") from None
    raise ProtocolError("malformed body: truncated pickle")


class Inert:
    """What a persistent id from the sandbox decodes to: data, nothing more.

    It cannot be called, has no state to set and no items to add, so the pickle
    opcodes the scanner might have missed would fail on it rather than act.
    """

    __slots__ = ("pid",)

    def __init__(self, pid: Any) -> None:
        self.pid = pid

    def __setstate__(self, state: Any) -> None:
        raise ProtocolError("BUILD on a reference")

    def __reduce__(self) -> Any:
        raise ProtocolError("an undecoded reference cannot be pickled")


class SafeUnpickler(pickle.Unpickler):
    """Unpickler for scanned bodies: no globals, persistent ids become :class:`Inert`."""

    def find_class(self, module: str, name: str) -> Any:
        raise ProtocolError(f"forbidden global {module}.{name}")

    def persistent_load(self, pid: Any) -> Inert:
        return Inert(pid)


def loads_untrusted(body: bytes) -> tuple[Any, bool]:
    """Decode a body from the sandbox: scan, then unpickle. Returns (object, has_refs)."""
    has_pid = scan(body)
    try:
        if has_pid:
            return SafeUnpickler(io.BytesIO(body)).load(), True
        return pickle.loads(body), False
    except ProtocolError:
        raise
    except RecursionError:
        raise ProtocolError("malformed body: nested too deeply") from None
    except Exception as exc:
        raise ProtocolError(f"malformed body: {type(exc).__name__}: {str(exc)[:200]}") from None


def resolve(obj: Any, on_inert: Callable[[Inert], Any], depth: int = 0) -> Any:
    """Walk a decoded tree: check depth and swap every :class:`Inert` via ``on_inert``."""
    t = type(obj)
    if t in _SCALARS:
        return obj
    if depth >= MAX_DEPTH:
        raise ProtocolError(f"message nested deeper than {MAX_DEPTH} levels")
    d = depth + 1
    if t is Inert:
        return on_inert(obj)
    if t is list:
        for i, x in enumerate(obj):
            if type(x) not in _SCALARS:
                obj[i] = resolve(x, on_inert, d)
        return obj
    if t is tuple:
        if all(type(x) in _SCALARS for x in obj):
            return obj
        return tuple([resolve(x, on_inert, d) for x in obj])
    if t is dict:
        if all(type(k) in _SCALARS for k in obj):
            for k, v in obj.items():
                if type(v) not in _SCALARS:
                    obj[k] = resolve(v, on_inert, d)
            return obj
        return {resolve(k, on_inert, d): resolve(v, on_inert, d) for k, v in obj.items()}
    if t is set:
        return {resolve(x, on_inert, d) for x in obj}
    if t is frozenset:
        return frozenset(resolve(x, on_inert, d) for x in obj)
    raise ProtocolError(f"unexpected {t.__name__} in a decoded message")


# --------------------------------------------------------------------------- value records

_TZ_KEY = re.compile(r"^[A-Za-z0-9_+\-]+(/[A-Za-z0-9_+\-]+)*$")


def _encode_tz(tz: Any) -> Any:
    if tz is None:
        return None
    if tz is _dt.timezone.utc:
        return ("utc",)
    if type(tz) is _dt.timezone:
        off = tz.utcoffset(None)
        name = tz.tzname(None)
        default = _dt.timezone(off).tzname(None)
        return ("off", off.days, off.seconds, off.microseconds, None if name == default else name)
    key = getattr(tz, "key", None)
    if isinstance(key, str):
        return ("zi", key)
    raise CapabilityError(
        f"cannot send a datetime with tzinfo of type {type(tz).__name__}; use "
        "datetime.timezone or zoneinfo.ZoneInfo"
    )


def _decode_tz(data: Any) -> Any:
    if data is None:
        return None
    if type(data) is not tuple or not data:
        raise ProtocolError("bad time zone record")
    if data == ("utc",):
        return _dt.timezone.utc
    if data[0] == "off" and len(data) == 5:
        _, days, secs, us, name = data
        if not all(type(x) is int for x in (days, secs, us)) or not (name is None or type(name) is str):
            raise ProtocolError("bad time zone offset record")
        off = _dt.timedelta(days=days, seconds=secs, microseconds=us)
        return _dt.timezone(off) if name is None else _dt.timezone(off, name)
    if data[0] == "zi" and len(data) == 2 and type(data[1]) is str:
        key = data[1]
        if len(key) > 64 or ".." in key or not _TZ_KEY.match(key):
            raise ProtocolError(f"bad time zone key {safe_repr(key)}")
        import zoneinfo

        return zoneinfo.ZoneInfo(key)
    raise ProtocolError("bad time zone record")


def encode_value_record(obj: Any) -> tuple | None:
    """The ``("v", kind, payload)`` id for a standard by-value object, else None."""
    t = type(obj)
    if t is complex:
        return ("v", "complex", (obj.real, obj.imag))
    if t is _dt.datetime:
        return ("v", "datetime", (obj.replace(tzinfo=None).isoformat(), obj.fold, _encode_tz(obj.tzinfo)))
    if t is _dt.date:
        return ("v", "date", obj.isoformat())
    if t is _dt.time:
        return ("v", "time", (obj.replace(tzinfo=None).isoformat(), obj.fold, _encode_tz(obj.tzinfo)))
    if t is _dt.timedelta:
        return ("v", "timedelta", (obj.days, obj.seconds, obj.microseconds))
    if t is _dt.timezone:
        return ("v", "timezone", _encode_tz(obj))
    if t is decimal.Decimal:
        return ("v", "Decimal", str(obj))
    if t is fractions.Fraction:
        return ("v", "Fraction", (obj.numerator, obj.denominator))
    if t is uuid.UUID:
        return ("v", "UUID", obj.int)
    return None


def _need(cond: bool, kind: str) -> None:
    if not cond:
        raise ProtocolError(f"bad {kind} record")


def decode_value_record(kind: Any, payload: Any) -> Any:
    """Build a standard by-value object from a checked record."""
    try:
        if kind == "complex":
            _need(type(payload) is tuple and len(payload) == 2 and all(type(x) is float for x in payload), kind)
            return complex(*payload)
        if kind in ("datetime", "time"):
            _need(type(payload) is tuple and len(payload) == 3 and type(payload[0]) is str
                  and len(payload[0]) <= 40 and payload[1] in (0, 1), kind)
            cls = _dt.datetime if kind == "datetime" else _dt.time
            value = cls.fromisoformat(payload[0])
            return value.replace(tzinfo=_decode_tz(payload[2]), fold=payload[1])
        if kind == "date":
            _need(type(payload) is str and len(payload) <= 20, kind)
            return _dt.date.fromisoformat(payload)
        if kind == "timedelta":
            _need(type(payload) is tuple and len(payload) == 3 and all(type(x) is int for x in payload), kind)
            return _dt.timedelta(days=payload[0], seconds=payload[1], microseconds=payload[2])
        if kind == "timezone":
            tz = _decode_tz(payload)
            _need(type(tz) is _dt.timezone, kind)
            return tz
        if kind == "Decimal":
            _need(type(payload) is str and len(payload) <= 10_000, kind)
            return decimal.Decimal(payload)
        if kind == "Fraction":
            _need(type(payload) is tuple and len(payload) == 2 and all(type(x) is int for x in payload)
                  and payload[1] != 0, kind)
            return fractions.Fraction(payload[0], payload[1])
        if kind == "UUID":
            _need(type(payload) is int and 0 <= payload < 1 << 128, kind)
            return uuid.UUID(int=payload)
    except ProtocolError:
        raise
    except (ValueError, TypeError, OverflowError, ArithmeticError, LookupError) as exc:
        raise ProtocolError(f"bad {kind} record: {exc}") from None
    raise ProtocolError(f"unknown value record kind {safe_repr(kind)}")


# --------------------------------------------------------------------------- exceptions as data


def describe_type(obj: Any) -> str:
    t = type(obj)
    mod = t.__module__
    return t.__qualname__ if mod in ("builtins", None) else f"{mod}.{t.__qualname__}"
