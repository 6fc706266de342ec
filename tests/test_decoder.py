"""The host's decoder (capbridge._decoder): exact for what the sandbox writes, and for
any other bytes a ProtocolError - never another exception, never past its budgets."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import capbridge
from capbridge import ProtocolError
from capbridge._decoder import MAX_DEPTH, Budget, decode

sys.path.insert(0, os.path.dirname(__file__))
import decoder_cases as C  # noqa: E402


def _no_refs(pid):
    raise AssertionError(f"unexpected reference {pid!r}")


def _dec(data, ref=_no_refs, budget=None):
    return decode(data, ref, budget or Budget())


# --------------------------------------------------------------------------- exactness

_scalars = (
    st.none() | st.booleans() | st.integers() | st.integers(min_value=-(2 ** 600), max_value=2 ** 600)
    | st.floats(allow_nan=False) | st.text(max_size=300) | st.binary(max_size=300)
)
_keys = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20) | st.binary(max_size=20),
                     lambda k: st.tuples(k, k) | st.frozensets(k, max_size=4), max_leaves=8)
_values = st.recursive(
    _scalars | st.builds(bytearray, st.binary(max_size=50)),
    lambda v: (st.lists(v, max_size=8) | st.tuples(v, v) | st.lists(v, max_size=6).map(tuple)
               | st.dictionaries(_keys, v, max_size=6) | st.sets(_keys, max_size=6)
               | st.frozensets(_keys, max_size=6)),
    max_leaves=60,
)


def _same(a, b):
    """Equal, with exactly the same types all the way down."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_values)
def test_what_the_sandbox_writes_decodes_exactly(value):
    assert _same(_dec(C.fast_pickle(value, refs=False)), value)


@pytest.mark.parametrize("value", [
    list(range(5000)), [x * 0.25 for x in range(3000)], [-(2 ** 31), 2 ** 31 - 1] * 700,
    list(range(256, 70000, 13)), [None] * 3000, [True] * 2000 + [False] * 1999, tuple(range(4000)),
    {i: str(i) for i in range(3000)}, set(range(2500)), frozenset(range(1500)), b"x" * 200_000,
    "y" * 100_000, bytearray(70_000), "\ud800 lone surrogate", [[1] * 20] * 20,
])
def test_runs_and_large_values_decode_exactly(value):
    assert _same(_dec(C.fast_pickle(value, refs=False)), value)


def test_references_are_resolved_as_they_are_decoded():
    seen = []

    def ref(pid):
        seen.append(pid)
        return f"object for {pid[1]}"

    body = C.fast_pickle([C.Ref(("r", 1)), {"k": C.Ref(("c", 2, 3, None))}])
    assert _dec(body, ref) == ["object for 1", {"k": "object for 2"}]
    assert seen == [("r", 1), ("c", 2, 3, None)]


# --------------------------------------------------------------------------- budgets


def _deep(levels: int) -> bytes:
    return C.payload(C.EMPTY_TUPLE + C.TUPLE1 * levels)


def test_depth_boundary():
    assert _dec(_deep(MAX_DEPTH)) is not None
    with pytest.raises(ProtocolError, match=f"nested deeper than {MAX_DEPTH} levels"):
        _dec(_deep(MAX_DEPTH + 1))


@pytest.mark.parametrize("container", ["list", "dict", "set"])
def test_depth_counts_every_container(container):
    inner = {"list": C.EMPTY_LIST, "dict": C.EMPTY_DICT, "set": C.EMPTY_SET}[container]
    ok = C.payload(inner + C.TUPLE1 * (MAX_DEPTH - 1))
    assert _dec(ok) is not None
    with pytest.raises(ProtocolError, match="nested deeper"):
        _dec(C.payload(inner + C.TUPLE1 * MAX_DEPTH))


def test_memory_budget_counts_real_sizes():
    # 1 byte of EMPTY_SET is a 216-byte set: 10,000 of them are over a 1 MiB budget.
    body = C.payload(C.MARK + C.EMPTY_SET * 10_000 + C.TUPLE)
    with pytest.raises(ProtocolError, match="message over budget.*host memory"):
        _dec(body, budget=Budget(floor=1 << 20))
    assert len(_dec(body, budget=Budget(floor=8 << 20))) == 10_000
    assert len(_dec(body)) == 10_000  # the default allows 8 MiB for any message


def test_memory_budget_scales_with_the_frame_and_is_capped():
    b = Budget(ratio=15, floor=1 << 20, max_bytes=64 << 20)
    assert b.memory_for(10) == 1 << 20
    assert b.memory_for(2 << 20) == 30 << 20
    assert b.memory_for(64 << 20) == 64 << 20


def test_object_and_key_budgets():
    body = C.fast_pickle(list(range(1000, 3000)), refs=False)
    with pytest.raises(ProtocolError, match="more than 100 objects"):
        _dec(body, budget=Budget(max_objects=100))
    body = C.fast_pickle(set(range(500)), refs=False)
    with pytest.raises(ProtocolError, match="more than 100 dict and set entries"):
        _dec(body, budget=Budget(max_keys=100))


def test_int_size_budget():
    assert _dec(C.payload(C.bigint(1 << (8 * 8000)))) == 1 << (8 * 8000)
    with pytest.raises(ProtocolError, match="an int of 8193 bytes"):
        _dec(C.payload(b"\x8b" + (8193).to_bytes(4, "little") + b"\x01" * 8193))


@pytest.mark.parametrize("kind", ["set", "dict", "frozenset"])
def test_keys_with_one_hash_are_refused_past_the_limit(kind):
    limit = 8
    ok = [k * ((1 << 61) - 1) for k in range(1, limit + 1)]
    bad = ok + [(limit + 1) * ((1 << 61) - 1)]
    assert len({hash(k) for k in bad}) == 1
    make = {"set": set, "frozenset": frozenset, "dict": dict.fromkeys}[kind]
    assert _dec(C.fast_pickle(make(ok), refs=False)) == make(ok)
    with pytest.raises(ProtocolError, match="share a hash"):
        _dec(C.fast_pickle(make(bad), refs=False))


def test_tuple_keys_with_one_hash_are_refused():
    keys = [(k * ((1 << 61) - 1),) for k in range(1, 20)]
    assert len({hash(k) for k in keys}) == 1
    with pytest.raises(ProtocolError, match="share a hash"):
        _dec(C.fast_pickle(set(keys), refs=False))


def test_stop_hook_ends_decoding():
    class Killed(Exception):
        pass

    calls = []

    def stop():
        calls.append(1)
        return Killed("the sandbox was killed") if len(calls) > 2 else None

    body = C.fast_pickle(["x" * 10] * 50_000, refs=False)
    with pytest.raises(Killed):
        _dec(body, budget=Budget(stop=stop))
    assert len(calls) == 3


def test_mutating_opcodes_only_touch_containers_the_decoder_made():
    class Host:
        pass

    host = Host()
    for tail, what in [(b"K\x01a", "APPEND to a Host"), (b"(K\x01e", "APPENDS to a Host"),
                       (b"K\x01K\x01s", "SETITEM on a Host"), (b"(K\x01\x90", "ADDITEMS to a Host")]:
        body = C.payload(b"(\x8c\x01rK\x01\x86Q" + tail)
        with pytest.raises(ProtocolError, match=what):
            _dec(body, lambda pid: host)
    assert vars(host) == {}


def test_a_host_object_with_its_own_hash_is_refused_as_a_key():
    class Hashy:
        hashed = 0

        def __hash__(self):
            Hashy.hashed += 1
            return 1

    body = C.fast_pickle({C.Ref(("r", 1)): 1})
    with pytest.raises(ProtocolError, match="cannot be a dict key"):
        _dec(body, lambda pid: Hashy())
    assert Hashy.hashed == 0

    class Plain:
        pass

    key = Plain()
    assert _dec(body, lambda pid: key) == {key: 1}  # identity-hashed objects are fine


# --------------------------------------------------------------------------- hostile bytes


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_only_ever_raise_protocol_error(data):
    try:
        decode(b"\x80\x05" + data, lambda pid: object(), Budget())
    except ProtocolError:
        pass


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        pos = rng.randrange(len(b)) if b else 0
        if op == 0 and b:
            b[pos] = rng.randrange(256)
        elif op == 1:
            b.insert(pos, rng.randrange(256))
        elif op == 2 and b:
            del b[pos]
        elif op == 3 and b:
            other = rng.choice(C.seeds())
            cut = rng.randrange(len(other))
            b[pos:] = other[cut:]
        else:
            b[pos:pos] = bytes([rng.choice(b"rpqhgjc\x93R\x81b\x82\x85\x87tQ(eu\x90")]) + rng.randbytes(rng.randrange(5))
    return bytes(b)


def _host():
    from capbridge._host_session import HostSession

    class Obj:
        pass

    s = HostSession()
    obj = Obj()
    s.tables.exports.export(obj, obj, None)  # export id 1, for ("r", 1) references
    return s


def test_mutated_bodies_only_ever_raise_protocol_error():
    rng = random.Random(20261201)
    session = _host()
    seeds = C.seeds()
    accepted = refused = 0
    for _ in range(20000):
        try:
            session.decode(_mutate(rng, rng.choice(seeds)))
            accepted += 1
        except ProtocolError:
            refused += 1
    assert refused > 5000 and accepted > 200  # the fuzz really exercised both outcomes


def test_decoder_survives_mutations_in_a_separate_process():
    # A crash (a segfault in C code) would kill pytest itself; check a batch in a child.
    code = textwrap.dedent(
        """
        import random, sys
        sys.path.insert(0, %r)
        import test_decoder as t
        rng = random.Random(7)
        s = t._host()
        seeds = t.C.seeds()
        for _ in range(10000):
            try:
                s.decode(t._mutate(rng, rng.choice(seeds)))
            except t.ProtocolError:
                pass
        print("ok")
        """
    ) % (os.path.dirname(__file__),)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_the_fuzz_corpus_replays():
    """The atheris target's corpus (tests/fuzz/corpus) decodes or is refused."""
    folder = os.path.join(os.path.dirname(__file__), "fuzz", "corpus")
    names = sorted(os.listdir(folder))
    assert len(names) >= 10
    session = _host()
    for name in names:
        with open(os.path.join(folder, name), "rb") as f:
            data = f.read()
        try:
            session.decode(data)
        except ProtocolError:
            pass


# --------------------------------------------------------------------------- adversarial frames


@pytest.mark.parametrize("name", sorted(C.adversarial(1 << 18)))
def test_adversarial_payloads_stay_within_the_memory_budget(name):
    body = C.adversarial(1 << 18)[name]
    budget = Budget(floor=1 << 20)  # so the ratio, not the floor, decides
    limit = budget.memory_for(len(body))
    tracemalloc.start()
    try:
        try:
            value = _dec(body, lambda pid: object(), budget)
        except ProtocolError:
            value = None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del value
    # What the decoder charges is what CPython allocates (within a little slack for
    # the decoder's own bookkeeping).
    assert peak <= limit * 1.1 + (256 << 10), f"{name}: peak {peak} > budget {limit}"


# --------------------------------------------------------------------------- found attacking it

import gc  # noqa: E402
import struct  # noqa: E402

import hostile as H  # noqa: E402
from capbridge import _decoder  # noqa: E402


class _HostObject:
    """A host object with its own __len__ and __sizeof__, reached through a reference."""

    calls: list = []

    def __len__(self):
        _HostObject.calls.append("__len__")
        raise RuntimeError("host code ran")

    def __sizeof__(self):
        _HostObject.calls.append("__sizeof__")
        raise RuntimeError("host code ran")


@pytest.mark.parametrize("tail", [H.MARK + H.i(1) + H.i(2) + H.APPENDS, H.MARK + H.i(1) + H.i(2) + H.SETITEMS,
                                  H.MARK + H.i(1) + H.ADDITEMS, H.i(1) + H.APPEND, H.i(1) + H.i(2) + H.SETITEM])
def test_adding_to_a_reference_never_runs_host_code(tail):
    _HostObject.calls = []
    with pytest.raises(ProtocolError, match="to a _HostObject|on a _HostObject"):
        _dec(H.body(H.ref(H.i(1)) + tail), lambda pid: _HostObject())
    assert _HostObject.calls == []


def test_no_full_garbage_collection_while_a_large_body_decodes():
    # 200,000 small lists: enough allocations for several full collections, each a
    # single C call over every container alive.
    lists = H.EMPTY_LIST + H.MARK + H.i(1) + H.i(2) + H.APPENDS
    body = H.body(H.EMPTY_LIST + (H.MARK + lists * 1000 + H.APPENDS) * 200)
    full = []

    def watch(phase, info):
        if phase == "start" and info["generation"] == 2:
            full.append(1)

    gc.collect()
    gc.callbacks.append(watch)
    try:
        assert len(_dec(body, budget=Budget(floor=1 << 30, max_bytes=1 << 30))) == 200_000
    finally:
        gc.callbacks.remove(watch)
    assert full == []
    assert gc.isenabled()


def test_the_collector_is_paused_once_for_nested_decodes():
    assert gc.isenabled()
    with _decoder._gc_pause:
        with _decoder._gc_pause:
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with _decoder._gc_pause:
            pass
        assert not gc.isenabled()  # the application's choice is left alone
    finally:
        gc.enable()


def test_a_refused_message_is_freed_in_steps():
    big = [[list(range(100)) for _ in range(1000)] for _ in range(3)]
    stack = [big[0], {k: [k] * 70 for k in range(200)}, set(range(70_000)), (big[1],), [big[2]]]
    wreck = [stack]
    _decoder._teardown(wreck)
    assert wreck == [] and stack == [] and big[0] == [] and big[2] == []  # (a tuple cannot be emptied)


def test_the_stop_hook_is_polled_inside_one_long_run():
    # One MARK, then two million BININT1: a single run of one opcode.
    calls = []

    def stop():
        calls.append(1)
        return None

    body = H.body(H.MARK + H.i(7) * 2_000_000 + H.TUPLE)
    _dec(body, budget=Budget(stop=stop, floor=1 << 30, max_bytes=1 << 30))
    assert len(calls) >= 40  # once a frame (64 KiB), not once the run is over


def test_stack_growth_is_charged_within_a_frame():
    # 1 MiB of NONE under one MARK then a too-large APPENDS: refused, and the decoder
    # took no more than the budget on the way.
    body = H.body(H.EMPTY_LIST + H.MARK + H.NONE * (1 << 20) + H.APPENDS)
    budget = Budget(floor=4 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError):
            _dec(body, budget=budget)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= budget.memory_for(len(body)) + (512 << 10)


def test_small_readers_leave_lone_surrogates_to_decode():
    from capbridge._decoder import NOT_SMALL, small_answer, small_call

    ans = H.PROTO + H.framed(H.SHORT_BINUNICODE + b"\x03\xed\xa0\x80" + H.STOP)
    assert small_answer(ans, 0) is NOT_SMALL
    assert _dec(ans) == "\ud800"
    call = H.PROTO + H.framed(H.s("f") + H.SHORT_BINUNICODE + b"\x03\xed\xa0\x80" + H.TUPLE1 + H.EMPTY_DICT
                              + H.TUPLE3 + H.STOP)
    assert small_call(call, 0) is None
    assert _dec(call) == ("f", ("\ud800",), {})


def test_lone_surrogates_are_charged_as_work():
    data = b"\xed\xa0\x80" * 100_000
    body = H.body(H.BINUNICODE + struct.pack("<I", len(data)) + data)
    assert _dec(body) == "\ud800" * 100_000
    with pytest.raises(ProtocolError, match="lone surrogates"):
        _dec(body, budget=Budget(work_floor=0, work_ratio=10))


def test_one_string_is_held_to_max_string_bytes():
    data = b"a" * 999_999 + "\U0001f600".encode()
    body = H.body(H.BINUNICODE + struct.pack("<I", len(data)) + data)
    assert len(_dec(body)) == 1_000_000
    with pytest.raises(ProtocolError, match="a string of 1000000 characters would take 3 MiB"):
        _dec(body, budget=Budget(max_string_bytes=2 << 20))


def test_a_heavy_key_counts_as_several_for_the_flood_check():
    # Two tuple keys of 3000 values with one hash: each counts as 1 + 3000 // 256.
    k1 = tuple(range(3000))
    k2 = (*range(2999), 2999 + (1 << 61) - 1)  # a tuple's hash is its items' hashes, ints' mod 2**61-1
    assert hash(k1[-1]) == hash(k2[-1]) and hash(k1) == hash(k2) and k1 != k2
    assert _dec(C.fast_pickle({k1}, refs=False)) == {k1}
    with pytest.raises(ProtocolError, match="share a hash"):
        _dec(C.fast_pickle({k1, k2}, refs=False))


def test_time_zones_are_loaded_once_and_their_errors_are_protocol_errors(monkeypatch):
    import zoneinfo

    from capbridge import _codec

    loads = []
    real = zoneinfo.ZoneInfo

    def fake(key):
        loads.append(key)
        if key == "Denied/Zone":
            raise PermissionError(13, "Permission denied")
        return real.no_cache("UTC")

    monkeypatch.setattr(_codec, "_ZONES", {})
    monkeypatch.setattr(zoneinfo, "ZoneInfo", fake)
    record = ("2024-01-02T03:04:05", 0, ("zi", "Test/Zone"))
    a = _codec.decode_value_record("datetime", record)
    b = _codec.decode_value_record("datetime", record)
    assert a.tzinfo is b.tzinfo and loads == ["Test/Zone"]
    with pytest.raises(ProtocolError, match="bad time zone key 'Denied/Zone': PermissionError"):
        _codec.decode_value_record("datetime", ("2024-01-02T03:04:05", 0, ("zi", "Denied/Zone")))


# --------------------------------------------------------------------------- the small readers


_small_scalars = (st.none() | st.booleans() | st.integers(min_value=-(2 ** 40), max_value=2 ** 40)
                  | st.floats(allow_nan=False) | st.text(max_size=40) | st.binary(max_size=40)
                  | st.integers(min_value=-(2 ** 600), max_value=2 ** 600))


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.none(), st.text(max_size=30)), st.lists(_small_scalars, max_size=18))
def test_small_call_agrees_with_decode(name, args):
    from capbridge._decoder import small_call

    payload = C.fast_pickle((name, tuple(args), {}), refs=False)
    got = small_call(payload, 0)
    if got is not None:
        assert _same(got, _dec(payload))


@settings(max_examples=500, deadline=None)
@given(_small_scalars)
def test_small_answer_agrees_with_decode(value):
    from capbridge._decoder import NOT_SMALL, small_answer

    payload = C.fast_pickle(value, refs=False)
    got = small_answer(payload, 0)
    if got is not NOT_SMALL:
        assert _same(got, _dec(payload))


@settings(max_examples=2000, deadline=None)
@given(st.binary(min_size=1, max_size=120))
def test_small_readers_agree_with_decode_on_any_bytes(tail):
    """Any body: whenever a small reader returns a value, decode() returns the same."""
    from capbridge._decoder import NOT_SMALL, small_answer, small_call

    for payload in (b"\x80\x05" + tail, b"\x80\x05" + H.FRAME + struct.pack("<Q", len(tail)) + tail):
        for reader, none in ((small_answer, NOT_SMALL), (small_call, None)):
            got = reader(payload, 0)
            if got is not none:
                assert _same(got, _dec(payload, lambda pid: object()))


# --------------------------------------------------------------------------- numpy arrays by value

_ARRAYS_INSIDE = '''
import numpy as np

def describe(a):
    return type(a).__module__, a.dtype.str, a.shape, a.tobytes()

def make(kind):
    return {
        "f8": np.arange(1 << 19, dtype="<f8"),  # 4 MiB
        "grid": np.arange(24, dtype=">i4").reshape(2, 3, 4),
        "bool": np.array([True, False, True]),
        "u2": np.arange(7, dtype="<u2"),
        "c16": np.array([1 + 2j, 3 - 4j]),
        "S5": np.array([b"ab", b"cdefg"]),
        "U3": np.array(["x", "yz\\u00e9"]),
        "empty": np.zeros((0, 5)),
        "strided": np.arange(100, dtype="<i8")[::3],
    }[kind]

def echo(a):
    return a
'''


def test_numpy_arrays_cross_by_value_both_ways_in_a_strict_sandbox(sandbox_factory):
    np = pytest.importorskip("numpy")

    try:
        sb = sandbox_factory(confinement="strict", allow_imports=("numpy",))
    except Exception as exc:  # ConfinementUnavailable
        pytest.skip(f"strict confinement unavailable: {exc}")
    mod = sb.load(_ARRAYS_INSIDE, name="arrays_inside")
    host_side = {
        "f8": np.arange(1 << 19, dtype="<f8"), "grid": np.arange(24, dtype=">i4").reshape(2, 3, 4),
        "bool": np.array([True, False, True]), "u2": np.arange(7, dtype="<u2"),
        "c16": np.array([1 + 2j, 3 - 4j]), "S5": np.array([b"ab", b"cdefg"]), "U3": np.array(["x", "yz\u00e9"]),
        "empty": np.zeros((0, 5)), "strided": np.arange(100, dtype="<i8")[::3],
    }
    for kind, want in host_side.items():
        got = mod.make(kind)  # sandbox -> host
        assert type(got) is np.ndarray and got.dtype == want.dtype and got.shape == want.shape, kind
        assert np.array_equal(got, want), kind
        module, dtype, shape, raw = mod.describe(want)  # host -> sandbox
        assert (module, dtype, shape, raw) == ("numpy", want.dtype.str, want.shape, want.tobytes()), kind
        back = mod.echo(want)  # both ways
        assert back.dtype == want.dtype and np.array_equal(back, want), kind
    with pytest.raises(capbridge.CapabilityError, match="cannot cross by value"):
        mod.echo(np.array([object()]))
