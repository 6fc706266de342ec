"""Unit tests of the checked codec (scan, SafeUnpickler/Inert, resolve, value records),
and a round trip through a real sandbox proving the decoder is not over-strict."""

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
from capbridge._codec import (
    MAX_DEPTH,
    Inert,
    SafeUnpickler,
    decode_value_record,
    encode_value_record,
    loads_untrusted,
    resolve,
    scan,
)

sys.path.insert(0, os.path.dirname(__file__))
import hostile as H  # noqa: E402


def fast_dumps(obj, pid=None) -> bytes:
    """What the sandbox writes: protocol 5, no memo."""
    buf = io.BytesIO()
    p = pickle.Pickler(buf, 5)
    p.fast = True
    if pid is not None:
        p.persistent_id = pid
    p.dump(obj)
    return buf.getvalue()


PLAIN_SAMPLES = [
    None, True, False, 0, 1, -1, 255, 256, 65535, 65536, -(2 ** 31), 2 ** 31, 2 ** 64, -(10 ** 300),
    0.0, -1.5, float("inf"), "", "é" * 300, "x" * 70_000, b"", b"\x00" * 300, bytearray(b"ab"),
    (), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4), [], [1, [2, [3]]], {}, {"a": 1, 2: [3]},
    set(), {1, 2, 3}, frozenset(), frozenset({"a", (1, 2)}), {"k": ({1}, frozenset({2}), [b"x"])},
    list(range(5000)), {str(n): n for n in range(2000)},
]


# --------------------------------------------------------------------------- scan


@pytest.mark.parametrize("obj", PLAIN_SAMPLES, ids=lambda o: type(o).__name__)
def test_scan_accepts_memo_free_data(obj):
    body = fast_dumps(obj)
    assert scan(body) is False
    got, refs = loads_untrusted(body)
    assert not refs
    assert got == obj and type(got) is type(obj)


def test_scan_accepts_framed_pickles_and_reports_persistent_ids():
    body = fast_dumps(["x" * 100_000, 1])
    assert b"\x95" in body  # FRAME opcode
    assert scan(body) is False
    body = fast_dumps([1, "ref"], pid=lambda o: ("r", 7) if o == "ref" else None)
    assert scan(body) is True


def test_scan_rejects_an_ordinary_pickle_with_memo():
    body = pickle.dumps(["shared", "shared"] * 2, 5)  # memoizes: BINPUT/MEMOIZE + BINGET
    s = "a"
    body = pickle.dumps([s * 3, s * 3][:1] * 2, 5)
    assert b"h" in body or b"j" in body
    with pytest.raises(ProtocolError, match="forbidden pickle opcode (BINGET|LONG_BINGET)"):
        scan(body)


@pytest.mark.parametrize("opcode", [
    H.GLOBAL + b"os\nsystem\n", H.STACK_GLOBAL, H.REDUCE, H.BUILD, H.INST + b"a\nb\n", H.OBJ,
    H.NEWOBJ, H.NEWOBJ_EX, H.EXT1 + b"\x01", H.EXT2 + b"\x01\x00", H.EXT4 + b"\x01\x00\x00\x00",
    H.PUT + b"0\n", H.BINPUT + b"\x00", H.LONG_BINPUT + b"\x00\x00\x00\x00", H.GET + b"0\n",
    H.BINGET + b"\x00", H.LONG_BINGET + b"\x00\x00\x00\x00", H.INT + b"1\n", H.LONG + b"1L\n",
    H.STRING + b"'a'\n", H.UNICODE + b"a\n", H.FLOAT + b"1.0\n", H.PERSID + b"x\n",
    H.NEXT_BUFFER, H.READONLY_BUFFER, H.DUP, H.BINSTRING + b"\x00\x00\x00\x00",
    H.SHORT_BINSTRING + b"\x00",
])
def test_scan_rejects_forbidden_opcodes(opcode):
    with pytest.raises(ProtocolError, match=rf"forbidden pickle opcode \S+ \(0x{opcode[0]:02x}\) at offset 3"):
        scan(H.PROTO + H.NONE + opcode + H.STOP)


def test_scan_reports_the_offset_past_length_prefixed_arguments():
    body = H.PROTO + H.s("x" * 300) + H.REDUCE + H.STOP
    with pytest.raises(ProtocolError, match=r"REDUCE \(0x52\) at offset 307"):
        scan(body)


def test_scan_does_not_mistake_argument_bytes_for_opcodes():
    # 'c' (GLOBAL) and 'R' (REDUCE) inside string and bytes arguments are data.
    for obj in ["cos\nsystem\nR", b"cos\nsystem\n(tR.", "\x80\x05c", [b"R" * 300, "b" * 70000]]:
        body = fast_dumps(obj)
        assert scan(body) is False


@pytest.mark.parametrize("body, match", [
    (b"", "not a pickle"),
    (b"\x80\x05", "not a pickle"),
    (b"N.\x00", "not a pickle"),
    (H.PROTO + H.NONE, "truncated"),
    (H.PROTO + H.SHORT_BINUNICODE + b"\x05ab", "truncated"),
    (H.PROTO + H.BININT, "truncated"),
    (H.PROTO + H.NONE + H.STOP + b"\x00", r"1 bytes after STOP"),
    (H.PROTO + H.NONE + H.STOP + H.NONE + H.STOP, r"2 bytes after STOP"),
])
def test_scan_structure(body, match):
    with pytest.raises(ProtocolError, match=match):
        scan(body)


# --------------------------------------------------------------------------- Inert / SafeUnpickler


def test_persistent_ids_become_inert():
    body = H.body(H.tup(H.ref(H.i(3)), H.pid(H.s("c"), H.i(1), H.i(1), H.NONE)))
    obj, refs = loads_untrusted(body)
    assert refs
    assert [type(x) for x in obj] == [Inert, Inert]
    assert obj[0].pid == ("r", 3)


def test_inert_refuses_state_and_pickling():
    inert = Inert(("r", 1))
    with pytest.raises(ProtocolError, match="BUILD on a reference"):
        inert.__setstate__({"x": 1})
    with pytest.raises(ProtocolError, match="cannot be pickled"):
        pickle.dumps(inert)
    with pytest.raises(AttributeError):
        inert.other = 1  # __slots__
    with pytest.raises(TypeError):
        inert()


def test_safe_unpickler_refuses_globals_even_unscanned():
    body = pickle.dumps(os.getcwd, 2)  # GLOBAL posix getcwd
    with pytest.raises(ProtocolError, match="forbidden global"):
        SafeUnpickler(io.BytesIO(body)).load()


# --------------------------------------------------------------------------- resolve


def _nest(depth: int, leaf=0, kind=list):
    obj = leaf
    for _ in range(depth):
        obj = kind([obj])
    return obj


@pytest.mark.parametrize("kind", [list, tuple, frozenset])
def test_resolve_depth_boundary(kind):
    # resolve() counts the outermost container as depth 0.
    ok = _nest(MAX_DEPTH, kind=kind)
    assert resolve(ok, lambda i: i) == ok
    with pytest.raises(ProtocolError, match=f"nested deeper than {MAX_DEPTH} levels"):
        resolve(_nest(MAX_DEPTH + 1, kind=kind), lambda i: i)


def test_resolve_depth_through_dicts_and_sets():
    obj = 0
    for n in range(MAX_DEPTH + 1):
        obj = {"k": obj} if n % 2 else {frozenset({n}): [obj]}
    with pytest.raises(ProtocolError, match="nested deeper"):
        resolve(obj, lambda i: i)


def test_resolve_replaces_every_inert_everywhere():
    marks = [Inert(("r", n)) for n in range(7)]
    obj = [marks[0], (1, marks[1]), {"a": marks[2], marks[3]: 1}, {marks[4]}, frozenset({marks[5]}),
           [[[marks[6]]]]]
    seen = []

    def swap(inert):
        seen.append(inert.pid[1])
        return f"R{inert.pid[1]}"

    out = resolve(obj, swap)
    assert sorted(seen) == list(range(7))
    assert out == ["R0", (1, "R1"), {"a": "R2", "R3": 1}, {"R4"}, frozenset({"R5"}), [[["R6"]]]]


def test_resolve_rejects_unexpected_types():
    for bad in [object(), [1, object()], {"k": dt.date(2020, 1, 1)}]:
        with pytest.raises(ProtocolError, match="unexpected"):
            resolve(bad, lambda i: i)


def test_resolve_errors_from_on_inert_propagate():
    def refuse(inert):
        raise ProtocolError("nope")

    with pytest.raises(ProtocolError, match="nope"):
        resolve([1, [Inert(("r", 1))]], refuse)


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
    # The record itself is memo-free data the scanner accepts.
    body = fast_dumps(rec)
    scan(body)
    kind, payload = pickle.loads(body)[1:]
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
    ("Decimal", "1" * 10_001, "bad Decimal record"),
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

    A RETURN is ``(tag, qid, value)``: the message tuple is level 0, so a list nested
    ``MAX_DEPTH - 1`` deep (innermost list at level MAX_DEPTH - 1) is the deepest
    accepted and one more level is a ProtocolError.
    """
    deepest = MAX_DEPTH - 1
    sb = _sandbox(confinement="none", limits=Limits(wall_seconds=20))
    try:
        sb.exec(f"MAXD = {MAX_DEPTH}\n" + SANDBOX_VALUES_SRC)
        got = sb.eval(_nested_src(deepest))
        assert got == _nest(deepest)
        with pytest.raises(ProtocolError, match=f"nested deeper than {MAX_DEPTH} levels"):
            sb.eval(_nested_src(deepest + 1))
        assert not sb.alive
    finally:
        sb.close()


def test_depth_limit_boundary_for_call_arguments():
    """Arguments sit two levels down (message tuple, args tuple)."""
    echo = Echo()
    sb = _sandbox(grants={"echo": echo}, confinement="none", limits=Limits(wall_seconds=20))
    try:
        sb.exec(f"MAXD = {MAX_DEPTH}\n" + SANDBOX_VALUES_SRC)
        deepest = MAX_DEPTH - 2
        sb.exec(f"echo.put('ok', {_nested_src(deepest)})")
        assert echo.got["ok"] == _nest(deepest)
        with pytest.raises(ProtocolError, match="nested deeper"):
            sb.exec(f"echo.put('bad', {_nested_src(deepest + 1)})")
        assert "bad" not in echo.got
    finally:
        sb.close()
