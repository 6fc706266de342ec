"""Values that cross by value beyond what pickle writes with data opcodes alone.

Towards the sandbox the host is trusted: bodies are ordinary protocol-5 pickles and
``Sandbox.call`` ships functions with cloudpickle. Towards the host every byte is
hostile and goes through :mod:`capbridge._decoder`. In both directions the standard
value types below (and registered value types, and numpy arrays) travel as *records*:
persistent ids ``("v", kind, payload)`` whose payload is plain data, rebuilt here by
checked constructors with their sizes bounded, so no class is ever named on the wire.

Persistent ids (all plain tuples):

* ``("c", export_id, iface_key, descriptor_or_None)`` - a capability exported by the
  sender; the descriptor comes with the first reference to that interface.
* ``("r", export_id)`` - one of the *receiver's* exports, handed back.
* ``("v", kind, payload)`` - a value record (complex, the datetime types, Decimal,
  Fraction, UUID, ``numpy.ndarray``, value types).
"""

from __future__ import annotations

import datetime as _dt
import decimal
import fractions
import re
import uuid
TYPE_CHECKING = False
if TYPE_CHECKING:  # (typing is not imported at run time: it costs start-up)
    from typing import Any

from ._errors import CapabilityError, ProtocolError, safe_repr

__all__ = [
    "PLAIN_TYPES",
    "SCALARS",
    "STDLIB_VALUE_TYPES",
    "encode_value_record",
    "decode_value_record",
    "is_ndarray",
    "describe_type",
]

#: Types pickle writes with data opcodes only.
PLAIN_TYPES = frozenset(
    {type(None), bool, int, float, str, bytes, bytearray, list, tuple, dict, set, frozenset}
)
#: Values that hold no other value: a message of these never needs the tables.
SCALARS = frozenset({type(None), bool, int, float, str, bytes})

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

#: Bits of a Fraction's numerator or denominator (building one costs a gcd).
MAX_FRACTION_BITS = 4096
#: Characters of a Decimal's text, and its exponent's magnitude.
MAX_DECIMAL_CHARS = 1000
MAX_DECIMAL_EXPONENT = 999_999
#: Dimensions of an array.
MAX_NDIM = 32

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
    if is_ndarray(obj):
        return ("v", "ndarray", _encode_ndarray(obj))
    return None


# --------------------------------------------------------------------------- numpy arrays

_DTYPE = re.compile(r"^[<>|=]?[biufcSU][0-9]{1,5}$")


def is_ndarray(obj: Any) -> bool:
    """True for a ``numpy.ndarray`` itself (not a subclass), without importing numpy."""
    t = type(obj)
    return t.__name__ == "ndarray" and t.__module__ == "numpy"


def _encode_ndarray(arr: Any) -> tuple:
    import pickle

    import numpy

    dt = arr.dtype
    if dt.hasobject or dt.fields is not None or not _DTYPE.match(dt.str):
        raise CapabilityError(
            f"a numpy array of dtype {dt} cannot cross by value: only plain dtypes (bool, "
            "ints, floats, complex, fixed-width bytes and str) can; convert it first"
        )
    if not arr.flags.c_contiguous:
        arr = numpy.ascontiguousarray(arr)
    data = pickle.PickleBuffer(arr) if arr.flags.writeable else arr.tobytes()
    return (dt.str, tuple(int(d) for d in arr.shape), data)


def _decode_ndarray(payload: Any) -> Any:
    _need(type(payload) is tuple and len(payload) == 3, "ndarray")
    dtype, shape, data = payload
    _need(type(dtype) is str and _DTYPE.match(dtype) is not None, "ndarray")
    _need(type(shape) is tuple and len(shape) <= MAX_NDIM and all(type(d) is int and d >= 0 for d in shape),
          "ndarray")
    _need(type(data) in (bytes, bytearray), "ndarray")
    width = int(dtype.lstrip("<>|=")[1:])
    itemsize = width * 4 if "U" in dtype else width
    count = 1
    for d in shape:
        count *= d
    _need(itemsize > 0 and count * itemsize == len(data), "ndarray")
    try:
        import numpy
    except ImportError:
        raise ProtocolError("a numpy array arrived, but numpy cannot be imported here") from None
    dt = numpy.dtype(dtype)
    _need(dt.itemsize == itemsize, "ndarray")
    return numpy.frombuffer(data, dtype=dt).reshape(shape)


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
            _need(type(payload) is str and len(payload) <= MAX_DECIMAL_CHARS, kind)
            value = decimal.Decimal(payload)
            if value.is_finite():
                _need(abs(value.as_tuple().exponent) <= MAX_DECIMAL_EXPONENT, kind)  # type: ignore[arg-type]
            return value
        if kind == "Fraction":
            _need(type(payload) is tuple and len(payload) == 2 and all(type(x) is int for x in payload)
                  and payload[1] > 0 and max(payload[0].bit_length(), payload[1].bit_length())
                  <= MAX_FRACTION_BITS, kind)
            return fractions.Fraction(payload[0], payload[1])
        if kind == "ndarray":
            return _decode_ndarray(payload)
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
