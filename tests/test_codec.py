"""Unit tests of the value records (capbridge._codec), and a round trip through a real
sandbox proving the decoder is not over-strict. The decoder itself is tested in
tests/test_decoder.py."""

from __future__ import annotations

import datetime as dt
import decimal
import fractions
import io
import os
import pickle
import sys
import uuid
import warnings

import pytest

import capbridge
from capbridge import Limits, ProtocolError, expose
from capbridge._codec import decode_value_record, encode_value_record
from capbridge._decoder import MAX_DEPTH, decode

sys.path.insert(0, os.path.dirname(__file__))


def fast_dumps(obj, pid=None) -> bytes:
    """What the sandbox writes: protocol 5, no memo."""
    buf = io.BytesIO()
    p = pickle.Pickler(buf, 5)
    p.fast = True
    if pid is not None:
        p.persistent_id = pid
    p.dump(obj)
    return buf.getvalue()


def _nest(depth: int, leaf=0, kind=list):
    obj = leaf
    for _ in range(depth):
        obj = kind([obj]) if kind is not dict else {"k": obj}
    return obj


# --------------------------------------------------------------------------- value records

VALUES = [
    1 + 2j, complex(-0.0, float("inf")),
    dt.date(2024, 2, 29), dt.date.min, dt.date.max,
    dt.time(23, 59, 59, 999999), dt.time(1, 2, tzinfo=dt.timezone.utc),
    dt.time(1, 2, tzinfo=dt.timezone(dt.timedelta(hours=-3, minutes=-30), "NST")),
    dt.datetime(2024, 1, 1, 12, 0, 0, 5), dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc),
    dt.datetime(2024, 11, 3, 1, 30, fold=1, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=45))),
    dt.timedelta(days=-5, seconds=3, microseconds=7), dt.timedelta.max, dt.timedelta.min,
    dt.timezone.utc, dt.timezone(dt.timedelta(hours=9)), dt.timezone(dt.timedelta(minutes=-90), "X"),
    decimal.Decimal("3.14159"), decimal.Decimal("-0"), decimal.Decimal("NaN"), decimal.Decimal("1E+999"),
    fractions.Fraction(-22, 7), fractions.Fraction(10 ** 40, 3),
    uuid.UUID(int=0), uuid.UUID(int=(1 << 128) - 1), uuid.uuid4(),
]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_value_records_round_trip(value):
    rec = encode_value_record(value)
    assert rec[0] == "v"
    # The record itself is memo-free data the host's decoder accepts.
    kind, payload = decode(fast_dumps(rec), None)[1:]
    got = decode_value_record(kind, payload)
    assert type(got) is type(value)
    if isinstance(value, decimal.Decimal) and value.is_nan():
        assert got.is_nan()
    else:
        assert got == value
    if isinstance(value, (dt.datetime, dt.time)):
        assert got.fold == value.fold and got.tzinfo == value.tzinfo
        if value.tzinfo is not None:
            assert got.tzname() == value.tzname()


def test_zoneinfo_round_trip():
    zoneinfo = pytest.importorskip("zoneinfo")
    try:
        tz = zoneinfo.ZoneInfo("Europe/Paris")
    except Exception:
        pytest.skip("no tz database")
    value = dt.datetime(2024, 10, 27, 2, 30, fold=1, tzinfo=tz)
    got = decode_value_record(*encode_value_record(value)[1:])
    assert got == value and got.fold == 1 and got.tzinfo.key == "Europe/Paris"


def test_encode_value_record_ignores_plain_and_subclass_types():
    class MyDate(dt.date):
        pass

    for obj in [1, "x", [1], MyDate(2020, 1, 1), object()]:
        assert encode_value_record(obj) is None


@pytest.mark.parametrize("kind, payload, match", [
    ("complex", (1, 2), "bad complex record"),
    ("complex", (1.0,), "bad complex record"),
    ("date", "2020-13-01", "bad date record"),
    ("date", 20200101, "bad date record"),
    ("time", ("25:00", 0, None), "bad time record"),
    ("datetime", ("2020-01-01", 0, ("zi", "..")), "bad time zone key"),
    ("datetime", ("2020-01-01", 0, ("zi", "a" * 65)), "bad time zone key"),
    ("datetime", ("2020-01-01", 0, ("zi", "Europe/../../etc")), "bad time zone key"),
    ("datetime", ("2020-01-01", 0, ("off", 0, 0, 0)), "bad time zone record"),
    ("datetime", ("2020-01-01", 0, ("off", 1, 0, 0, None)), "bad datetime record"),  # |offset| >= 1 day
    ("datetime", ("2020-01-01", 0, "utc"), "bad time zone record"),
    ("datetime", ("x" * 41, 0, None), "bad datetime record"),
    ("datetime", ("2020-01-01", True, None), None),  # True == 1: accepted as fold=1
    ("timedelta", (1, 2), "bad timedelta record"),
    ("timedelta", (1.0, 0, 0), "bad timedelta record"),
    ("timezone", None, "bad timezone record"),
    ("Decimal", 1, "bad Decimal record"),
    ("Decimal", "1" * 1001, "bad Decimal record"),
    ("Decimal", "1e1000000", "bad Decimal record"),
    ("Fraction", (1, -2), "bad Fraction record"),
    ("Fraction", (1 << 4097, 3), "bad Fraction record"),
    ("ndarray", ("<f8", (3,), b"\0" * 16), "bad ndarray record"),
    ("ndarray", ("|O", (1,), b"\0" * 8), "bad ndarray record"),
    ("ndarray", ("<f8", (-1,), b""), "bad ndarray record"),
    ("ndarray", ("<f8", (1,) * 40, b"\0" * 8), "bad ndarray record"),
    ("Fraction", (1, 0), "bad Fraction record"),
    ("Fraction", (1.5, 2), "bad Fraction record"),
    ("UUID", -1, "bad UUID record"),
    ("UUID", 1 << 128, "bad UUID record"),
    ("UUID", True, "bad UUID record"),
    ("vt", ("X", (), ()), "unknown value record kind"),  # value types go through the session
    ("pickle", b"", "unknown value record kind"),
    (None, None, "unknown value record kind"),
])
def test_decode_value_record_rejects(kind, payload, match):
    if match is None:
        assert decode_value_record(kind, payload).fold == 1
        return
    with pytest.raises(ProtocolError, match=match):
        decode_value_record(kind, payload)


# --------------------------------------------------------------------------- through a real sandbox


def _sandbox(**kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return capbridge.Sandbox(**kwargs)


SANDBOX_VALUES_SRC = r'''
import datetime as dt, decimal, fractions, uuid, zoneinfo
def _nest(depth, leaf=0):
    obj = leaf
    for _ in range(depth):
        obj = [obj]
    return obj
try:
    PARIS = zoneinfo.ZoneInfo("Europe/Paris")
except Exception:
    PARIS = dt.timezone(dt.timedelta(hours=1), "CET")
VALUES = {
    "none": None, "bools": [True, False], "ints": [0, -1, 2**31, -(2**63), 10**1000 // 7],
    "floats": [0.1, -0.0, float("inf")], "complex": [1+2j, -3j],
    "text": ["", "h\u00e9llo", "\U0001f600" * 100, "x" * 100_000],
    "bytes": [b"", b"\x00\xff" * 1000], "bytearray": bytearray(b"\x80\x05cos\nsystem\n"),
    "tuple": (1, (2, (3, ())), "t"), "set": {1, "a", (2, 3), frozenset({4})},
    "frozenset": frozenset({b"x", 1.5, (1, (2,))}),
    "dict": {"a": {"b": {"c": [1, {"d": (2,)}]}}, 1: "int key", (1, 2): "tuple key", None: 0,
             frozenset({1}): "fs key", b"k": 1.0},
    "datetime": [dt.datetime(2024, 3, 31, 2, 30, tzinfo=dt.timezone.utc), dt.datetime(2020, 1, 1),
                 dt.datetime(2021, 6, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=-7), "PDT")),
                 dt.date(1999, 12, 31), dt.time(12, 30, tzinfo=dt.timezone.utc),
                 dt.timedelta(days=3, microseconds=1), dt.timezone.utc],
    "decimal": [decimal.Decimal("1.10"), decimal.Decimal("-Infinity")],
    "fraction": fractions.Fraction(355, 113), "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "deep": _nest(MAXD - 5, leaf={"x": (1,)}),
    "mixed": [[dt.date(2020, 1, 1), {decimal.Decimal(1): fractions.Fraction(1, 3)}],
              {uuid.UUID(int=5)}, (1+1j, frozenset({dt.timedelta(1)}))],
    "big_list": list(range(20_000)), "big_dict": {str(n): [n] for n in range(5000)},
}
'''


def _expected_values():
    ns = {"MAXD": MAX_DEPTH}
    exec(SANDBOX_VALUES_SRC, ns)
    return ns["VALUES"]


class Echo:
    def __init__(self):
        self.got = {}

    @expose
    def put(self, key, value):
        self.got[key] = value
        return True


@pytest.fixture(params=["none", "strict"])
def value_sandbox(request):
    echo = Echo()
    try:
        sb = _sandbox(grants={"echo": echo}, confinement=request.param,
                      limits=Limits(wall_seconds=20))
    except capbridge.ConfinementUnavailable as exc:
        pytest.skip(f"confinement={request.param!r} unavailable: {exc}")
    sb.exec(f"MAXD = {MAX_DEPTH}\n" + SANDBOX_VALUES_SRC)
    yield sb, echo
    sb.close()


def test_sandbox_values_reach_the_host_intact(value_sandbox):
    sb, echo = value_sandbox
    expected = _expected_values()
    # sandbox -> host as a RETURN value ...
    for key, value in expected.items():
        got = sb.eval(f"VALUES[{key!r}]")
        assert got == value, key
        assert type(got) is type(value), key
    # ... and as CALL arguments to a host capability
    sb.exec("for k, v in VALUES.items(): assert echo.put(k, v) is True, k")
    assert echo.got == expected
    dts = echo.got["datetime"]
    assert dts[0].utcoffset() == expected["datetime"][0].utcoffset()
    assert dts[2].tzname() == "PDT"
    assert sb.alive


def test_zoneinfo_datetime_from_the_sandbox(value_sandbox):
    sb, echo = value_sandbox
    if not sb.eval("isinstance(PARIS, zoneinfo.ZoneInfo)"):
        pytest.skip("no tz database inside this sandbox")
    got = sb.eval("dt.datetime(2024, 10, 27, 2, 30, fold=1, tzinfo=PARIS)")
    assert got.tzinfo.key == "Europe/Paris" and got.fold == 1
    assert got.utcoffset() == dt.timedelta(hours=1)


class Clock:
    @expose
    def paris_now(self):
        import zoneinfo

        return dt.datetime(2024, 7, 14, 12, 0, tzinfo=zoneinfo.ZoneInfo("Europe/Paris"))


def test_zoneinfo_datetime_from_the_host():
    pytest.importorskip("zoneinfo")
    sb = _sandbox(grants={"clock": Clock()}, confinement="none", limits=Limits(wall_seconds=20))
    try:
        assert sb.eval("str(clock.paris_now())") == "2024-07-14 12:00:00+02:00"
    finally:
        sb.close()


def _nested_src(depth):
    return f"_nest({depth})"


def test_depth_limit_boundary_through_a_sandbox():
    """Find the deepest list a sandbox may return; it must be exactly at the limit.

    A RETURN's payload is the value itself, so a list nested ``MAX_DEPTH`` deep is the
    deepest accepted. One more level fails at the call site with CapabilityError: the
    sandbox checks its message as the host would before sending it, and lives on.
    """
    deepest = MAX_DEPTH
    sb = _sandbox(confinement="none", limits=Limits(wall_seconds=20))
    try:
        sb.exec(f"MAXD = {MAX_DEPTH}\n" + SANDBOX_VALUES_SRC)
        got = sb.eval(_nested_src(deepest))
        assert got == _nest(deepest)
        with pytest.raises(capbridge.CapabilityError, match=f"nested deeper than {MAX_DEPTH} levels"):
            sb.eval(_nested_src(deepest + 1))
        assert sb.alive and sb.eval("1 + 1") == 2
    finally:
        sb.close()


def test_depth_limit_boundary_for_call_arguments():
    """Arguments sit two levels down (the (name, args, kwargs) payload, the args tuple)."""
    echo = Echo()
    sb = _sandbox(grants={"echo": echo}, confinement="none", limits=Limits(wall_seconds=20))
    try:
        sb.exec(f"MAXD = {MAX_DEPTH}\n" + SANDBOX_VALUES_SRC)
        deepest = MAX_DEPTH - 2
        sb.exec(f"echo.put('ok', {_nested_src(deepest)})")
        assert echo.got["ok"] == _nest(deepest)
        with pytest.raises(capbridge.RemoteError, match="CapabilityError.*nested deeper"):
            sb.exec(f"echo.put('bad', {_nested_src(deepest + 1)})")
        assert "bad" not in echo.got
        assert sb.alive
    finally:
        sb.close()
