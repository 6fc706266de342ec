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

import re
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

# The modules of the standard-library types that cross by value are imported when
# first needed (:func:`_load_stdlib`), not with this module: a fresh fork server
# imports it before its first sandbox, where uuid (with platform), fractions, decimal
# and datetime cost milliseconds. The server imports them later, while idle.
_dt = decimal = fractions = uuid = None  # type: ignore[assignment]
_loaded = False
_STDLIB_MODULES = frozenset({"datetime", "decimal", "fractions", "uuid"})
_STDLIB_KINDS = frozenset({"datetime", "time", "date", "timedelta", "timezone", "Decimal", "Fraction", "UUID"})


def _load_stdlib() -> frozenset:
    """Import the value types' modules; their types also become plain dict keys for the decoder."""
    global _dt, decimal, fractions, uuid, STDLIB_VALUE_TYPES, _loaded
    import datetime as dt_module
    import decimal as decimal_module
    import fractions as fractions_module
    import uuid as uuid_module

    from ._decoder import add_data_keys

    _dt, decimal, fractions, uuid = dt_module, decimal_module, fractions_module, uuid_module
    types = frozenset({_dt.date, _dt.time, _dt.datetime, _dt.timedelta, _dt.timezone, decimal.Decimal,
                       fractions.Fraction, uuid.UUID})
    add_data_keys(*types)
    STDLIB_VALUE_TYPES = types | {complex}
    _loaded = True  # last: another thread may use the modules once it sees this
    return STDLIB_VALUE_TYPES


def __getattr__(name: str) -> Any:
    if name == "STDLIB_VALUE_TYPES":  # the standard-library types that cross by value
        return _load_stdlib()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

#: Bits of a Fraction's numerator or denominator (building one costs a gcd).
MAX_FRACTION_BITS = 4096
#: Characters of a Decimal's text, and the magnitude of its adjusted exponent.
MAX_DECIMAL_CHARS = 1000
MAX_DECIMAL_EXPONENT = 999_999
#: Dimensions of an array.
MAX_NDIM = 32

# --------------------------------------------------------------------------- value records

_TZ_KEY = r"^[A-Za-z0-9_+\-]+(/[A-Za-z0-9_+\-]+)*$"


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


#: Time zones by key, each loaded once per process (a sandbox could otherwise make the
#: host read and parse a zone file for every datetime it sends).
_ZONES: dict[str, Any] = {}
_MAX_ZONES = 4096


def _zone(key: str) -> Any:
    zone = _ZONES.get(key)
    if zone is None:
        if len(key) > 64 or ".." in key or not re.match(_TZ_KEY, key):
            raise ProtocolError(f"bad time zone key {safe_repr(key)}")
        import zoneinfo

        try:
            zone = zoneinfo.ZoneInfo(key)
        except (OSError, ValueError, LookupError) as exc:
            raise ProtocolError(f"bad time zone key {safe_repr(key)}: {type(exc).__name__}") from None
        if len(_ZONES) < _MAX_ZONES:
            _ZONES[key] = zone
    return zone


def _decode_tz(data: Any) -> Any:
    if data is None:
        return None
    if type(data) is not tuple or not data:
        raise ProtocolError("bad time zone record")
    if data == ("utc",):
        return _dt.timezone.utc
    if data[0] == "off" and len(data) == 5:
        _, days, secs, us, name = data
        if type(days) is not int or type(secs) is not int or type(us) is not int \
                or not (name is None or type(name) is str):
            raise ProtocolError("bad time zone offset record")
        off = _dt.timedelta(days=days, seconds=secs, microseconds=us)
        return _dt.timezone(off) if name is None else _dt.timezone(off, name)
    if data[0] == "zi" and len(data) == 2 and type(data[1]) is str:
        return _zone(data[1])
    raise ProtocolError("bad time zone record")


def encode_value_record(obj: Any) -> tuple | None:
    """The ``("v", kind, payload)`` id for a standard by-value object, else None."""
    t = type(obj)
    if t is complex:
        return ("v", "complex", (obj.real, obj.imag))
    if is_ndarray(obj):
        return ("v", "ndarray", _encode_ndarray(obj))
    mod = t.__module__
    if type(mod) is not str or mod not in _STDLIB_MODULES:  # (a class may set any __module__)
        return None
    if not _loaded:
        _load_stdlib()
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


# --------------------------------------------------------------------------- numpy arrays

_DTYPE = r"^[<>|=]?[biufcSU][0-9]{1,5}$"


def is_ndarray(obj: Any) -> bool:
    """True for a ``numpy.ndarray`` itself (not a subclass), without importing numpy."""
    t = type(obj)
    return t.__name__ == "ndarray" and t.__module__ == "numpy"


def _encode_ndarray(arr: Any) -> tuple:
    import pickle

    import numpy

    dt = arr.dtype
    if dt.hasobject or dt.fields is not None or not re.match(_DTYPE, dt.str):
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
    _need(type(dtype) is str and re.match(_DTYPE, dtype) is not None, "ndarray")
    _need(type(shape) is tuple and len(shape) <= MAX_NDIM and type(data) in (bytes, bytearray), "ndarray")
    width = int(dtype.lstrip("<>|=")[1:])
    itemsize = width * 4 if "U" in dtype else width
    _need(itemsize > 0, "ndarray")
    # The shape's product must be the data's length: checked as it is formed, so no
    # product grows past that (a sandbox could send 32 dimensions of 8 KiB ints).
    count = 1
    items = len(data) // itemsize
    empty = 0 in shape  # then any other dimension up to numpy's index size
    for d in shape:
        _need(type(d) is int and 0 <= d < 1 << 62 and (empty or d <= items), "ndarray")
        if not empty:
            count *= d
            _need(count <= items, "ndarray")
    _need((0 if empty else count) * itemsize == len(data), "ndarray")
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


def _complex(p: Any) -> Any:
    _need(type(p) is tuple and len(p) == 2 and type(p[0]) is float and type(p[1]) is float, "complex")
    return complex(p[0], p[1])


def _clock(p: Any, cls: type, kind: str) -> Any:
    _need(type(p) is tuple and len(p) == 3 and type(p[0]) is str and len(p[0]) <= 40 and p[1] in (0, 1), kind)
    value = cls.fromisoformat(p[0])
    tz = p[2]
    if tz is None and not p[1]:
        return value
    return value.replace(tzinfo=_decode_tz(tz), fold=p[1])


def _date(p: Any) -> Any:
    _need(type(p) is str and len(p) <= 20, "date")
    return _dt.date.fromisoformat(p)


def _timedelta(p: Any) -> Any:
    _need(type(p) is tuple and len(p) == 3 and type(p[0]) is int and type(p[1]) is int and type(p[2]) is int,
          "timedelta")
    return _dt.timedelta(p[0], p[1], p[2])


def _timezone(p: Any) -> Any:
    tz = _decode_tz(p)
    _need(type(tz) is _dt.timezone, "timezone")
    return tz


def _decimal(p: Any) -> Any:
    _need(type(p) is str and len(p) <= MAX_DECIMAL_CHARS, "Decimal")
    value = decimal.Decimal(p)
    if value.is_finite():
        _need(-MAX_DECIMAL_EXPONENT <= value.adjusted() <= MAX_DECIMAL_EXPONENT, "Decimal")
    return value


def _fraction(p: Any) -> Any:
    _need(type(p) is tuple and len(p) == 2 and type(p[0]) is int and type(p[1]) is int and p[1] > 0
          and p[0].bit_length() <= MAX_FRACTION_BITS and p[1].bit_length() <= MAX_FRACTION_BITS, "Fraction")
    return fractions.Fraction(p[0], p[1])


def _uuid(p: Any) -> Any:
    _need(type(p) is int and 0 <= p < 1 << 128, "UUID")
    return uuid.UUID(int=p)


_BUILDERS = {
    "complex": _complex,
    "datetime": lambda p: _clock(p, _dt.datetime, "datetime"),
    "time": lambda p: _clock(p, _dt.time, "time"),
    "date": _date,
    "timedelta": _timedelta,
    "timezone": _timezone,
    "Decimal": _decimal,
    "Fraction": _fraction,
    "ndarray": _decode_ndarray,
    "UUID": _uuid,
}


def decode_value_record(kind: Any, payload: Any) -> Any:
    """Build a standard by-value object from a checked record."""
    build = _BUILDERS.get(kind) if type(kind) is str else None
    if build is not None and not _loaded and kind in _STDLIB_KINDS:
        _load_stdlib()
    if build is None:
        raise ProtocolError(f"unknown value record kind {safe_repr(kind)}")
    try:
        return build(payload)
    except ProtocolError:
        raise
    except (ValueError, TypeError, OverflowError, ArithmeticError, LookupError) as exc:
        raise ProtocolError(f"bad {kind} record: {exc}") from None


# --------------------------------------------------------------------------- exceptions as data


def describe_type(obj: Any) -> str:
    t = type(obj)
    mod = t.__module__
    return t.__qualname__ if mod in ("builtins", None) else f"{mod}.{t.__qualname__}"
