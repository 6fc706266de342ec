"""Hostile frames from the sandbox, at three levels.

1. sans-IO: each body goes to a bare host ``HostSession().decode`` (and
   raw bytes to ``FrameReader``) and must raise ``ProtocolError`` naming the fault.
2. in-process channel: the sandbox end of :func:`capbridge.testing.pair` writes the
   frame onto its pipe while the host waits for an answer.
3. end to end: code inside a real sandbox finds its own channel and writes the frame
   while ``Sandbox.exec`` is in progress; the call must raise ``ProtocolError``, the
   sandbox must be dead and its process gone, nothing may have happened on the host,
   and a new sandbox must still work.

The frames themselves are hand-written in ``tests/hostile.py``.
"""

from __future__ import annotations

import builtins
import dataclasses
import copy
import os
import struct
import subprocess
import sys
import threading
import time
import warnings

import pytest

import capbridge
from capbridge import Limits, ProtocolError, SandboxError, expose
from capbridge._errors_data import error_from_data
from capbridge._protocol import FrameReader, Tag
from capbridge._host_session import HostSession

sys.path.insert(0, os.path.dirname(__file__))
import hostile as H  # noqa: E402

CASES = H.CASES
MAX_FRAME = 64 * 1024 * 1024


class Vault:
    """A host capability the sandbox legitimately holds."""

    def __init__(self) -> None:
        self.secret = 0
        self.calls = 0

    @expose
    def ping(self, *args, **kwargs) -> str:
        self.calls += 1
        return "pong"


def _ids(cases):
    return [c.name for c in cases]


def _param(case, xfail_attr="xfail"):
    reason = getattr(case, xfail_attr)
    marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
    return pytest.param(case, id=case.name, marks=marks)


@pytest.fixture
def ctx(tmp_path):
    c = H.Ctx(marker=str(tmp_path / "pwned"))
    yield c
    assert not os.path.exists(c.marker), "the attack ran a command on the host"
    assert not hasattr(builtins, c.pwned), "the attack set a host global"


def test_there_are_enough_cases():
    assert len(CASES) >= 30
    stages = {c.stage for c in CASES}
    assert stages == {"decode", "frame", "route", "release", "error", "dispatch"}


# =========================================================================== sans-IO


def _host_session():
    session = HostSession(max_frame=MAX_FRAME)
    vault = Vault()
    pid = session.export(vault, None, None)
    return session, vault, pid[1]


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_sans_io(case, ctx):
    session, vault, cap_id = _host_session()
    before = copy.deepcopy(vault.__dict__)
    data = H.fill(case.build(ctx), cap_id=cap_id, qid=1)
    assert not any(m in data for m in H.MARKS)
    if case.stage == "frame":
        reader = FrameReader(MAX_FRAME)
        reader.feed(data)
        with pytest.raises(ProtocolError, match=case.match):
            reader.next_frame()
        with pytest.raises(ProtocolError, match=case.match):  # sticky
            reader.feed(b"\x00\x00\x00\x01N")
        return
    # The frame layer hands the body over untouched.
    reader = FrameReader(MAX_FRAME)
    reader.feed(H.frame(data))
    assert reader.next_frame() == data
    if case.stage == "decode":
        with pytest.raises(ProtocolError, match=case.match):
            session.decode(data)
    else:
        msg = session.decode(data)  # well-formed; the fault is in what it says
        if case.stage == "route":
            assert msg[0] in (Tag.RETURN, Tag.RAISE, Tag.HELLO)
            assert msg[0] == Tag.HELLO or msg[1] not in session.tables.questions
        elif case.stage == "release":
            assert msg[0] == Tag.RELEASE
            with pytest.raises(ProtocolError, match=case.match):
                session.handle_release(msg[1])
        elif case.stage == "dispatch":
            assert msg[0] == Tag.CALL
            with pytest.raises(ProtocolError, match=case.match):
                session.dispatch(msg)
        elif case.stage == "error":
            assert msg[0] == Tag.RAISE
            with pytest.raises(ProtocolError, match=case.match):
                error_from_data(msg[2], trusted=False)
    assert vault.__dict__ == before
    assert session.tables.exports.get(cap_id).obj is vault


def test_sans_io_decode_never_touches_a_live_object(ctx):
    """A reference followed by every mutating opcode: the live object stays untouched."""
    session, vault, cap_id = _host_session()
    vault.items = []
    before = copy.deepcopy(vault.__dict__)
    tails = [
        H.dct((H.s("secret"), H.i(1))) + H.BUILD,
        H.s("secret") + H.i(1) + H.SETITEM,
        H.MARK + H.s("secret") + H.i(1) + H.SETITEMS,
        H.i(1) + H.APPEND,
        H.MARK + H.i(1) + H.APPENDS,
        H.MARK + H.i(1) + H.ADDITEMS,
    ]
    for tail in tails:
        data = H.fill(H.call_with(H.ref(H.CAP_ID) + tail), cap_id=cap_id)
        with pytest.raises(ProtocolError):
            session.decode(data)
    assert vault.__dict__ == before


# =========================================================================== in-process channel


class _Boot:
    """Bootstrap of the in-process 'sandbox' end: writes raw bytes to the host."""

    def __init__(self) -> None:
        self.wfd = -1
        self.serving_qid = 0
        self.written = 0
        self.done = threading.Event()

    def fire(self, data: bytes) -> str:
        try:
            with self.chan._send_lock:
                view = memoryview(data)
                while view:
                    n = os.write(self.wfd, view)
                    self.written += n
                    view = view[n:]
        finally:
            self.done.set()
        return "not killed"


@pytest.mark.parametrize("case", [_param(c, "xfail_e2e") for c in CASES])
def test_channel(case, ctx):
    from capbridge import testing

    boot = _Boot()
    p = testing.pair(boot)
    try:
        boot.wfd = p._fds[3]
        boot.chan = p.sandbox
        vault = Vault()
        session = p.host_session
        with p.host._send_lock:
            cap_id = session.export(vault, None, None)[1]
        before = copy.deepcopy(vault.__dict__)
        qid_next = None
        data = case.build(ctx)
        if case.stage != "frame":
            data = H.frame(data)
        # The host's next question id is the call below's: RAISE attacks aim at it.
        qid_probe = session.tables.next_qid()
        qid_next = qid_probe + 1
        data = H.fill(data, cap_id=cap_id, qid=qid_next)
        with pytest.raises(ProtocolError, match=case.match):
            p.call_bootstrap("fire", data)
        assert boot.done.wait(5)
        assert boot.written == len(data), "the frame was not delivered"
        assert isinstance(p.host.dead, ProtocolError), "the channel was not ended"
        assert vault.__dict__ == before
    finally:
        p.close()


# =========================================================================== end to end


def _sandbox(confinement="none", grants=None, **kwargs):
    kwargs.setdefault("limits", Limits(wall_seconds=10))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            return capbridge.Sandbox(grants, confinement=confinement, **kwargs)
        except capbridge.ConfinementUnavailable as exc:
            pytest.skip(f"confinement={confinement!r} unavailable here: {exc}")


def _gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
            if state in (b"Z", b"X"):
                return True
        except (FileNotFoundError, ProcessLookupError):
            return True
        time.sleep(0.01)
    return False


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def attack(sb, data: bytes, *, match: str, cap_name: str | None = None, raw: bool = False,
           pad: int = 0, exc=ProtocolError):
    """Run ``data`` from inside ``sb`` during ``sb.exec``; check the sandbox ended."""
    mod = sb.load(H.ATTACK_SRC, "hostile_attack")
    n = mod.stash(data, cap_name, raw, pad)
    assert n == (len(data) if raw else len(data) + 4) + pad
    del mod
    pid = sb.pid
    t0 = time.monotonic()
    with pytest.raises(exc, match=match) as info:
        sb.exec("import hostile_attack\nhostile_attack.fire()")
    assert time.monotonic() - t0 < 8, "the host only noticed at the deadline"
    assert "the sandbox was killed" in str(info.value)
    assert sb._proc.wait(5) is not None, "the sandbox process is still running"
    assert _gone(pid), "the sandbox process is still there"
    assert not sb.alive
    with pytest.raises(SandboxError):
        sb.eval("1")
    return info.value


def _new_sandbox_works(confinement="none"):
    sb = _sandbox(confinement)
    try:
        assert sb.eval("6 * 7") == 42
    finally:
        sb.close()


def _e2e(case, ctx, confinement):
    vault = Vault()
    sb = _sandbox(confinement, {"vault": vault})
    try:
        before = copy.deepcopy(vault.__dict__)
        data = case.build(ctx)
        attack(sb, data, match=case.match, cap_name="vault" if case.needs_cap else None,
               raw=case.stage == "frame")
        assert vault.__dict__ == before, "the attack changed a host object"
        assert vault.calls == 0
    finally:
        sb.close()


@pytest.mark.parametrize("case", [_param(c, "xfail_e2e") for c in CASES])
def test_e2e(case, ctx):
    _e2e(case, ctx, "none")


@pytest.mark.parametrize("case", [_param(c, "xfail_e2e") for c in CASES if c.strict_too])
def test_e2e_strict(case, ctx):
    _e2e(case, ctx, "strict")
    _new_sandbox_works("strict")


def test_e2e_host_survives_and_new_sandbox_works(ctx):
    """A batch of attacks in a row, then a fresh sandbox does real work."""
    for name in ("global_os_system", "million_deep_tuples", "length_2gb", "forged_ref_id"):
        _e2e(H.CASES_BY_NAME[name], ctx, "none")
        _new_sandbox_works()
    vault = Vault()
    with _sandbox("none", {"vault": vault}) as sb:
        assert sb.eval("vault.ping()") == "pong"
        assert vault.calls == 1


def test_e2e_2gb_claim_allocates_nothing(ctx):
    sb = _sandbox("none")
    try:
        before = _rss_kb()
        attack(sb, struct.pack(">I", 0x7FFF_FFFF) + b"\x80\x05" + b"N" * 65536, raw=True,
               match=r"frame of 2147483647 bytes exceeds the limit")
        assert _rss_kb() - before < 100 * 1024, "the host allocated for the claimed length"
    finally:
        sb.close()


def test_e2e_frame_just_over_max_message_mb():
    limit = 1024 * 1024
    sb = _sandbox("none", limits=Limits(max_message_mb=1, wall_seconds=10))
    try:
        head = struct.pack(">I", limit + 1) + H.PROTO
        attack(sb, head, raw=True, pad=limit + 1 - len(H.PROTO),
               match=rf"frame of {limit + 1} bytes exceeds the limit of {limit} bytes")
    finally:
        sb.close()


def test_e2e_frame_exactly_at_max_message_mb_is_accepted():
    """The boundary: a valid frame of exactly the limit is served, the sandbox lives."""
    limit = 1024 * 1024
    vault = Vault()
    sb = _sandbox("none", {"vault": vault}, limits=Limits(max_message_mb=1, wall_seconds=10))
    try:
        def with_bytes(size):  # bytes of 64 KiB or more travel outside frames, whatever the size
            return H.call_with(H.BINBYTES + struct.pack("<I", size) + b"\0" * size)

        filler = limit - (len(with_bytes(100_000)) - 100_000)
        body = with_bytes(filler)
        assert len(body) == limit
        cut = body.index(b"\0" * 64)
        head, tail = body[:cut], body[cut + filler:]
        mod = sb.load(H.ATTACK_SRC, "hostile_attack")
        mod.stash(struct.pack(">I", limit) + head, "vault", True, filler)  # the zeros are padded inside
        sb.exec("import hostile_attack\nhostile_attack._pending[0] += " + repr(tail))
        sb.exec("import hostile_attack\nhostile_attack.fire(0)")
        assert sb.alive
        assert sb.eval("6 * 7") == 42
        assert vault.calls == 1
        assert sb.stats()["bytes_to_host"] >= limit
    finally:
        sb.close()


def test_e2e_id_from_another_sandbox(ctx):
    """An export id valid in sandbox B's table is unknown to sandbox A."""
    va = Vault()
    a = _sandbox("none", {"vault": va})
    b = _sandbox("none", {f"v{n}": Vault() for n in range(6)})
    try:
        b.exec("for n in range(6): globals()[f'v{n}'].ping()")
        a_ids = set(a._session.tables.exports._by_id)
        b_ids = set(b._session.tables.exports._by_id)
        foreign = max(b_ids - a_ids)
        assert foreign not in a_ids
        attack(a, H.call_with(H.ref(H.i(foreign))),
               match=rf"reference to unknown export id {foreign}")
        assert b.eval("v5.ping()") == "pong"  # B is unaffected
        assert va.calls == 0
    finally:
        a.close()
        b.close()


def test_e2e_call_target_from_another_sandbox(ctx):
    va = Vault()
    a = _sandbox("none", {"vault": va})
    b = _sandbox("none", {f"v{n}": Vault() for n in range(6)})
    try:
        a_ids = set(a._session.tables.exports._by_id)
        foreign = max(set(b._session.tables.exports._by_id) - a_ids)
        attack(a, H.call(target=foreign), match=rf"call to unknown export id {foreign}")
        assert b.eval("6*7") == 42
    finally:
        a.close()
        b.close()


# =========================================================================== known holes


_DEEP_HASH_SANS_IO = r"""
import sys
sys.path.insert(0, {tests!r})
import hostile as H
from capbridge._host_session import HostSession
from capbridge import ProtocolError
deep = H.EMPTY_TUPLE + H.TUPLE1 * 1_000_000
body = H.call_with(H.EMPTY_DICT + deep + H.NONE + H.SETITEM)
try:
    HostSession().decode(H.fill(body, cap_id=1))
except ProtocolError as e:
    print("ProtocolError", e)
"""


def test_deep_tuple_dict_key_does_not_crash_the_host_sans_io():
    r = subprocess.run([sys.executable, "-c", _DEEP_HASH_SANS_IO.format(tests=os.path.dirname(__file__))],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"host decoder died with {r.returncode}: {r.stderr[-300:]}"
    assert "ProtocolError" in r.stdout


_DEEP_HASH_E2E = r"""
import sys, warnings
sys.path.insert(0, {tests!r})
warnings.simplefilter("ignore")
import hostile as H, capbridge
sb = capbridge.Sandbox(confinement="none", limits=capbridge.Limits(wall_seconds=10))
mod = sb.load(H.ATTACK_SRC, "hostile_attack")
mod.stash(H.release(H.tup(H.EMPTY_SET + H.MARK + H.EMPTY_TUPLE + H.TUPLE1 * 1_000_000 + H.ADDITEMS)))
del mod
try:
    sb.exec("import hostile_attack\nhostile_attack.fire()")
except capbridge.ProtocolError as e:
    print("ProtocolError", e)
sb.close()
"""


def test_deep_tuple_set_item_does_not_crash_the_host_e2e():
    r = subprocess.run([sys.executable, "-c", _DEEP_HASH_E2E.format(tests=os.path.dirname(__file__))],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"host process died with {r.returncode}: {r.stderr[-300:]}"
    assert "ProtocolError" in r.stdout


def test_value_record_nesting_counts_toward_depth_limit_control():
    """Control for the next test: plain nesting past MAX_DEPTH is refused."""
    from capbridge._decoder import MAX_DEPTH

    session, _, _ = _host_session()
    deep = H.EMPTY_TUPLE + H.TUPLE1 * (MAX_DEPTH + 10)
    with pytest.raises(ProtocolError, match="nested deeper"):
        session.decode(H.call_with(deep))


@capbridge.value_type(name="HostileDepthProbe")
@dataclasses.dataclass
class _DepthProbe:
    x: object


def _vt_record(value: bytes) -> bytes:
    return H.vrec("vt", H.tup(H.s("HostileDepthProbe"), H.tup(H.s("x")), H.tup(value), H.NEWFALSE))


def test_value_type_record_from_the_sandbox_is_accepted():
    """Control: the record shape used below is what the host accepts."""
    session, _, _ = _host_session()
    msg = session.decode(H.call_with(_vt_record(H.EMPTY_TUPLE + H.TUPLE1 * 5)))
    probe = msg[6][0]
    assert type(probe) is _DepthProbe and probe.x == ((((((),),),),),)


def test_value_record_nesting_counts_toward_depth_limit():
    from capbridge._decoder import MAX_DEPTH

    session, _, _ = _host_session()
    # 60 levels of tuples around a value record whose field nests 60 more: 120 > MAX_DEPTH.
    inner = H.EMPTY_TUPLE + H.TUPLE1 * 60
    outer = _vt_record(inner) + H.TUPLE1 * 60
    with pytest.raises(ProtocolError, match=f"nested deeper than {MAX_DEPTH}"):
        session.decode(H.call_with(outer))


def _proxy_set_frame(dunders: tuple[str, ...]) -> bytes:
    desc = H.descriptor(dunders=H.tup(*[H.member(d) for d in dunders]))
    return H.call_with(H.EMPTY_SET + H.MARK + H.cref(5, 9, desc) + H.ADDITEMS)


def test_unhashable_proxy_in_set_is_a_protocol_error():
    session, _, cap_id = _host_session()
    with pytest.raises(ProtocolError):
        session.decode(H.fill(_proxy_set_frame(("__eq__",)), cap_id=cap_id))


class _Recorder:
    def __init__(self):
        self.calls = []

    def call(self, *a, **k):
        self.calls.append(a)
        raise AssertionError("the decoder called into the sandbox")


def test_decoder_never_calls_into_the_sandbox():
    session, _, cap_id = _host_session()
    rec = _Recorder()
    session.channel = rec
    try:
        session.decode(H.fill(_proxy_set_frame(("__hash__", "__eq__")), cap_id=cap_id))
    except ProtocolError:
        pass
    except AssertionError:
        pass
    assert rec.calls == [], f"decode() made {len(rec.calls)} call(s) into the sandbox"


_SET_HANG_E2E = r"""
import sys, warnings
warnings.simplefilter("ignore")
import capbridge
from capbridge import expose

class Vault:
    @expose
    def ping(self, *args):
        return "pong"

SRC = '''
class K:
    def __hash__(self): return 1
    def __eq__(self, other): return self is other
vault.ping({K()})
'''
sb = capbridge.Sandbox({"vault": Vault()}, confinement="none",
                       limits=capbridge.Limits(wall_seconds=2))
try:
    sb.exec(SRC)
except capbridge.CapbridgeError as e:
    print("raised", type(e).__name__, e)
print("returned")
sb.close()
"""


def test_e2e_set_of_sandbox_objects_does_not_hang_the_host():
    try:
        r = subprocess.run([sys.executable, "-c", _SET_HANG_E2E], capture_output=True, text=True,
                           timeout=10)
    except subprocess.TimeoutExpired:
        raise AssertionError("the host thread hung (still blocked 10 s later, wall_seconds=2)")
    assert "returned" in r.stdout, r.stderr[-500:]
    assert "SandboxTimeout" not in r.stdout, "the host thread was stuck until the deadline"


@capbridge.value_type(name="HostileSlowValue")
@dataclasses.dataclass
class _SlowValue:
    """Host code the decoder runs for each record: 0.2 s a value."""

    x: object
    built = 0

    def __post_init__(self):
        type(self).built += 1
        time.sleep(0.2)


def test_e2e_a_reply_decoding_past_the_deadline_raises_sandbox_timeout():
    """The sandbox is killed while its reply decodes: the call raises SandboxTimeout
    (it never returns the value), and decoding stops at the next frame."""
    record = H.vrec("vt", H.tup(H.s("HostileSlowValue"), H.tup(H.s("x")), H.tup(H.NONE), H.NEWFALSE))
    filler = H.BINBYTES + struct.pack("<I", 60_000) + b"\0" * 60_000  # one frame per record
    data = H.ret(H.HQID, H.MARK + (record + filler) * 20 + H.TUPLE)
    _SlowValue.built = 0
    sb = _sandbox("strict", limits=Limits(wall_seconds=1))
    try:
        mod = sb.load(H.ATTACK_SRC, "hostile_attack")
        mod.stash(data)
        del mod
        with pytest.raises(capbridge.SandboxTimeout):
            sb.exec("import hostile_attack\nhostile_attack.fire()")
        assert _SlowValue.built < 20, "decoding went on after the sandbox was killed"
        assert not sb.alive
    finally:
        sb.close()
