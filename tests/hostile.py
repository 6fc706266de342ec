"""Hand-made hostile frames for the host's decoder.

Every body here is written opcode by opcode (no ``pickle.dumps``), the way an attacker
who controls the sandbox's end of the channel would write it. :data:`CASES` lists
them with the error the host must answer with; the test modules replay them against
a bare host :class:`~capbridge._session.Session` and against a real sandbox.

A body is a binary header (tag and ids, see ``capbridge._protocol``) followed by a
pickle payload. Placeholders: a body may contain :data:`CAP_ID` (a BININT whose 4
argument bytes are :data:`CAP_MARK`; in a big-endian u64 header field, :data:`HCAP`:
4 zeros and :data:`HCAP_MARK`) where the export id of a host capability the sandbox legitimately holds goes,
and :data:`QID` / :data:`HQID` (:data:`QID_MARK` / :data:`HQID_MARK`) where the id of the host's
question being served goes. :func:`fill` substitutes them; the in-sandbox attacker
(:data:`ATTACK_SRC`) does the same with what it finds in its own memory.
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Callable

# --------------------------------------------------------------------------- opcodes

PROTO = b"\x80\x05"
STOP = b"."
MARK = b"("
POP = b"0"
POP_MARK = b"1"
DUP = b"2"
NONE = b"N"
NEWTRUE = b"\x88"
NEWFALSE = b"\x89"
TUPLE = b"t"
EMPTY_TUPLE = b")"
TUPLE1 = b"\x85"
TUPLE2 = b"\x86"
TUPLE3 = b"\x87"
EMPTY_LIST = b"]"
APPEND = b"a"
APPENDS = b"e"
LIST = b"l"
EMPTY_DICT = b"}"
SETITEM = b"s"
SETITEMS = b"u"
DICT = b"d"
EMPTY_SET = b"\x8f"
ADDITEMS = b"\x90"
FROZENSET = b"\x91"
BINPERSID = b"Q"
PERSID = b"P"
GLOBAL = b"c"
STACK_GLOBAL = b"\x93"
REDUCE = b"R"
BUILD = b"b"
INST = b"i"
OBJ = b"o"
NEWOBJ = b"\x81"
NEWOBJ_EX = b"\x92"
EXT1 = b"\x82"
EXT2 = b"\x83"
EXT4 = b"\x84"
PUT = b"p"
BINPUT = b"q"
LONG_BINPUT = b"r"
GET = b"g"
BINGET = b"h"
LONG_BINGET = b"j"
MEMOIZE = b"\x94"
FRAME = b"\x95"
BYTEARRAY8 = b"\x96"
NEXT_BUFFER = b"\x97"
READONLY_BUFFER = b"\x98"
INT = b"I"
LONG = b"L"
STRING = b"S"
BINSTRING = b"T"
SHORT_BINSTRING = b"U"
UNICODE = b"V"
FLOAT = b"F"
BININT = b"J"
BININT1 = b"K"
BININT2 = b"M"
LONG1 = b"\x8a"
LONG4 = b"\x8b"
BINFLOAT = b"G"
SHORT_BINUNICODE = b"\x8c"
BINUNICODE = b"X"
SHORT_BINBYTES = b"C"
BINBYTES = b"B"
BINBYTES8 = b"\x8e"

# Message tags (capbridge._protocol.Tag), written as numbers on purpose.
T_CALL, T_RETURN, T_RAISE, T_RELEASE, T_HELLO = 1, 2, 3, 4, 5

CAP_MARK = b"\xe1\xe2\xe3\x0f"
QID_MARK = b"\xd1\xd2\xd3\x0e"
CAP_ID = BININT + CAP_MARK
QID = BININT + QID_MARK
#: The same placeholders as big-endian u64 header fields.
HCAP_MARK = b"\xe5\xe6\xe7\x0f"
HQID_MARK = b"\xd5\xd6\xd7\x0e"
HCAP = b"\0\0\0\0" + HCAP_MARK
HQID = b"\0\0\0\0" + HQID_MARK
MARKS = (CAP_MARK, QID_MARK, HCAP_MARK, HQID_MARK)


# --------------------------------------------------------------------------- encoders


def i(n: int) -> bytes:
    """An int, with the shortest binary opcode."""
    if 0 <= n < 256:
        return BININT1 + bytes([n])
    if 0 <= n < 65536:
        return BININT2 + struct.pack("<H", n)
    if -(1 << 31) <= n < (1 << 31):
        return BININT + struct.pack("<i", n)
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    if len(raw) < 256:
        return LONG1 + bytes([len(raw)]) + raw
    return LONG4 + struct.pack("<I", len(raw)) + raw


def s(text: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) < 256:
        return SHORT_BINUNICODE + bytes([len(raw)]) + raw
    return BINUNICODE + struct.pack("<I", len(raw)) + raw


def by(data: bytes) -> bytes:
    if len(data) < 256:
        return SHORT_BINBYTES + bytes([len(data)]) + data
    return BINBYTES + struct.pack("<I", len(data)) + data


def tup(*items: bytes) -> bytes:
    """A tuple, written as the pickler writes one of that length."""
    if not items:
        return EMPTY_TUPLE
    if len(items) <= 3:
        return b"".join(items) + (TUPLE1, TUPLE2, TUPLE3)[len(items) - 1]
    return MARK + b"".join(items) + TUPLE


def dct(*pairs: tuple[bytes, bytes]) -> bytes:
    """A dict, written as the pickler writes one of that size (at most 1000 pairs)."""
    if not pairs:
        return EMPTY_DICT
    if len(pairs) == 1:
        return EMPTY_DICT + pairs[0][0] + pairs[0][1] + SETITEM
    return EMPTY_DICT + MARK + b"".join(k + v for k, v in pairs) + SETITEMS


def pid(*items: bytes) -> bytes:
    """A persistent id: the tuple of ``items`` followed by BINPERSID."""
    return tup(*items) + BINPERSID


def ref(eid: bytes) -> bytes:
    return pid(s("r"), eid)


def vrec(kind: str, payload: bytes) -> bytes:
    return pid(s("v"), s(kind), payload)


def _op_ends(data: bytes) -> list[int] | None:
    """Where each opcode in ``data`` ends (pickletools' argument widths); None when
    ``data`` is not a sequence of whole opcodes."""
    import pickletools

    codes = {ord(o.code): o for o in pickletools.opcodes}
    ends = []
    i = 0
    try:
        while i < len(data):
            o = codes.get(data[i])
            if o is None:
                return None
            width = o.arg.n if o.arg is not None else 0
            if width >= 0:
                i += 1 + width
            elif width == pickletools.UP_TO_NEWLINE:
                i = data.index(b"\n", i + 1) + 1
            elif width == pickletools.TAKEN_FROM_ARGUMENT1:
                i += 2 + data[i + 1]
            elif width in (pickletools.TAKEN_FROM_ARGUMENT4, pickletools.TAKEN_FROM_ARGUMENT4U):
                i += 5 + struct.unpack_from("<I", data, i + 1)[0]
            else:
                i += 9 + struct.unpack_from("<Q", data, i + 1)[0]
            ends.append(i)
    except (IndexError, ValueError, struct.error):
        return None
    return ends if i == len(data) else None


#: What the pickler puts in one frame, and the size from which it writes a string or
#: bytes outside frames (capbridge._decoder.FRAME_TARGET).
FRAME_TARGET = 64 * 1024
_BLOBS = (BINUNICODE[0], BINBYTES[0], BYTEARRAY8[0])


def framed(ops: bytes) -> bytes:
    """``ops`` (whole opcodes, ending with STOP) cut into frames the way the sandbox's
    pickler cuts them: a new frame once one holds 64 KiB, strings and bytes of 64 KiB
    or more outside frames, and frames under 4 bytes left unframed. Bytes that are not
    whole opcodes go into one frame as they are."""
    ends = _op_ends(ops)
    if ends is None:
        return FRAME + struct.pack("<Q", len(ops)) + ops if len(ops) >= 4 else ops
    out = []
    frame_start = 0

    def commit(upto: int) -> None:
        part = ops[frame_start:upto]
        if len(part) >= 4:
            out.append(FRAME + struct.pack("<Q", len(part)))
        out.append(part)

    start = 0
    for end in ends:
        head = 9 if ops[start] == BYTEARRAY8[0] else 5
        if ops[start] in _BLOBS and end - start - head >= FRAME_TARGET:
            commit(start)
            out.append(ops[start:end])
            frame_start = end
        elif end - frame_start >= FRAME_TARGET:
            commit(end)
            frame_start = end
        start = end
    commit(len(ops))
    return b"".join(out)


def body(*parts: bytes) -> bytes:
    """A payload pickle: PROTO, then ``parts`` and STOP, framed as the pickler frames."""
    return PROTO + framed(b"".join(parts) + STOP)


def u64(n: int) -> bytes:
    return struct.pack(">Q", n)


def _hid(x: int | bytes) -> bytes:
    return x if isinstance(x, bytes) else u64(x)


def call_raw(payload: bytes, *, target: int | bytes = HCAP, qid: int | bytes = 1,
             parent: int | bytes = HQID, op: int = 0) -> bytes:
    """A CALL body: header, then ``payload`` (the whole pickle, as given)."""
    return bytes([T_CALL]) + _hid(qid) + _hid(parent) + _hid(target) + bytes([op]) + payload


def call(*, target: int | bytes = HCAP, name: bytes | None = None, args: bytes = EMPTY_TUPLE,
         kwargs: bytes = EMPTY_DICT, qid: int | bytes = 1, parent: int | bytes = HQID, op: int = 0) -> bytes:
    """Body of a CALL message; by default a call of method ``ping`` on the capability,
    nested in the host's question being served (so the host serves it before the answer)."""
    payload = body(tup(s("ping") if name is None else name, args, kwargs))
    return call_raw(payload, target=target, qid=qid, parent=parent, op=op)


def call_with(arg: bytes) -> bytes:
    """A CALL on the capability whose single argument is ``arg`` (the payload)."""
    return call(args=tup(arg))


def ret(qid: int | bytes, value: bytes) -> bytes:
    """A RETURN body carrying ``value`` (pickle opcodes)."""
    return bytes([T_RETURN]) + _hid(qid) + body(value)


def ret_raw(payload: bytes, qid: int | bytes = HQID) -> bytes:
    """A RETURN body whose payload is ``payload`` exactly (for malformed pickles)."""
    return bytes([T_RETURN]) + _hid(qid) + payload


def rais(qid: int | bytes, data: bytes) -> bytes:
    return bytes([T_RAISE]) + _hid(qid) + body(data)


def release(pairs: bytes) -> bytes:
    return bytes([T_RELEASE]) + body(pairs)


def hello(version: int, report: bytes) -> bytes:
    return bytes([T_HELLO]) + struct.pack(">I", version) + body(report)


def error_data(name: bytes = None, args: bytes = EMPTY_TUPLE, message: bytes = None, tb: bytes = None,
               extra: bytes = EMPTY_DICT) -> bytes:
    return tup(s("ValueError") if name is None else name, args, s("m") if message is None else message,
               s("") if tb is None else tb, extra)


def frame(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def fill(data: bytes, cap_id: int | None = None, qid: int | None = None) -> bytes:
    if cap_id is not None:
        data = data.replace(CAP_MARK, struct.pack("<i", cap_id)).replace(HCAP_MARK, struct.pack(">I", cap_id))
    if qid is not None:
        data = data.replace(QID_MARK, struct.pack("<i", qid)).replace(HQID_MARK, struct.pack(">I", qid))
    return data


def descriptor(*, name: str = "Evil", methods: bytes = EMPTY_TUPLE, props: bytes = EMPTY_TUPLE,
               dunders: bytes = EMPTY_TUPLE) -> bytes:
    """An interface descriptor (8 fields, see ``check_descriptor``)."""
    return tup(s(name), s(""), methods, props, dunders, NEWFALSE, s(""), NEWTRUE)


def member(name: str) -> bytes:
    return tup(s(name), s(""), s("()"))


def cref(eid: int, key: int, desc: bytes | None) -> bytes:
    """A capability exported by the sandbox: ('c', id, iface_key, descriptor)."""
    return pid(s("c"), i(eid), i(key), NONE if desc is None else desc)


def global_call(module: str, name: str, *args: bytes) -> bytes:
    """GLOBAL module.name, then REDUCE with ``args``: the classic pickle exploit."""
    return GLOBAL + f"{module}\n{name}\n".encode() + tup(*args) + REDUCE


# --------------------------------------------------------------------------- the cases


@dataclasses.dataclass(frozen=True)
class Ctx:
    """What a case may aim at: files that must not appear, a host global that must
    not be set."""

    marker: str  # a path the attack tries to create on the host
    pwned: str = "CAPBRIDGE_HOSTILE_PWNED"  # builtins attribute the attack tries to set


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[Ctx], bytes]  # frame BODY (or whole frame for stage "frame")
    match: str  # regex the ProtocolError message must match
    #: where the host must catch it: "decode" (Session.decode), "frame" (FrameReader:
    #: build returns raw stream bytes), "route" (the channel: unknown answers, HELLO),
    #: "release" (Session.handle_release), "error" (exception data of a RAISE),
    #: "dispatch" (Session.dispatch of a well-formed CALL)
    stage: str = "decode"
    needs_cap: bool = False  # body holds CAP_ID
    needs_qid: bool = False  # body holds QID
    xfail: str | None = None  # reason, when this is a known hole
    xfail_e2e: str | None = None
    strict_too: bool = False  # also replay under confinement="strict"


def _cmd(ctx: Ctx) -> bytes:
    return s(f"echo pwned > {ctx.marker}")


def _exec_code(ctx: Ctx) -> str:
    return (f"open({ctx.marker!r}, 'w').write('pwned'); "
            f"import builtins; builtins.{ctx.pwned} = 1")


def _nested_pickle(ctx: Ctx) -> bytes:
    # A complete protocol-0 pickle of os.system(cmd), hand-written.
    inner = b"cos\nsystem\n(V" + f"echo pwned > {ctx.marker}".encode() + b"\ntR."
    return inner


_FORBIDDEN = "forbidden pickle opcode"

CASES: list[Case] = [
    # --- globals and REDUCE: code execution attempts ------------------------------
    Case("global_os_system", lambda c: call_with(global_call("os", "system", _cmd(c))),
         rf"{_FORBIDDEN} GLOBAL", strict_too=True),
    Case("global_posix_system_bare", lambda c: call_raw(body(global_call("posix", "system", _cmd(c)))),
         rf"{_FORBIDDEN} GLOBAL"),
    Case("global_in_a_return", lambda c: ret(HQID, global_call("os", "system", _cmd(c))),
         rf"{_FORBIDDEN} GLOBAL", needs_qid=True),
    Case("stack_global_os_system",
         lambda c: call_with(s("os") + s("system") + STACK_GLOBAL + tup(_cmd(c)) + REDUCE),
         rf"{_FORBIDDEN} STACK_GLOBAL", strict_too=True),
    Case("reduce_builtins_eval",
         lambda c: call_with(global_call("builtins", "eval",
                                         s(f"exec({_exec_code(c)!r})"))),
         rf"{_FORBIDDEN} GLOBAL"),
    Case("reduce_builtins_exec", lambda c: call_with(global_call("builtins", "exec", s(_exec_code(c)))),
         rf"{_FORBIDDEN} GLOBAL"),
    Case("reduce_without_global",
         lambda c: call_with(s("x") + tup(_cmd(c)) + REDUCE), rf"{_FORBIDDEN} REDUCE"),
    Case("builtins_getattr",
         lambda c: call_with(global_call("builtins", "getattr",
                                         global_call("builtins", "__import__", s("os")), s("system"))
                             + tup(_cmd(c)) + REDUCE),
         rf"{_FORBIDDEN} GLOBAL"),
    Case("functools_partial",
         lambda c: call_with(global_call("functools", "partial",
                                         GLOBAL + b"os\nsystem\n", _cmd(c)) + EMPTY_TUPLE + REDUCE),
         rf"{_FORBIDDEN} GLOBAL"),
    Case("subprocess_popen",
         lambda c: call_with(global_call("subprocess", "Popen",
                                         tup(s("sh"), s("-c"), _cmd(c)))),
         rf"{_FORBIDDEN} GLOBAL"),
    Case("importlib_import_module",
         lambda c: call_with(global_call("importlib", "import_module", s("os"))),
         rf"{_FORBIDDEN} GLOBAL"),
    Case("nested_pickle_loads",
         lambda c: call_with(global_call("pickle", "loads", by(_nested_pickle(c)))),
         rf"{_FORBIDDEN} GLOBAL"),
    Case("inst_opcode",
         lambda c: call_with(MARK + _cmd(c) + INST + b"os\nsystem\n"), rf"{_FORBIDDEN} INST"),
    Case("obj_opcode",
         lambda c: call_with(MARK + s("os") + _cmd(c) + OBJ), rf"{_FORBIDDEN} OBJ"),
    Case("newobj_opcode",
         lambda c: call_with(s("cls") + tup() + NEWOBJ), rf"{_FORBIDDEN} NEWOBJ"),
    Case("newobj_ex_opcode",
         lambda c: call_with(s("cls") + tup() + EMPTY_DICT + NEWOBJ_EX), rf"{_FORBIDDEN} NEWOBJ_EX"),
    # --- mutating opcodes aimed at a decoded host reference ------------------------
    Case("build_on_reference",
         lambda c: call_with(ref(CAP_ID) + dct((s("secret"), i(1))) + BUILD),
         rf"{_FORBIDDEN} BUILD", needs_cap=True, strict_too=True),
    Case("setitem_on_reference",
         lambda c: call_with(ref(CAP_ID) + s("secret") + i(1) + SETITEM),
         r"malformed body: SETITEM on a Vault", needs_cap=True),
    Case("setitems_on_reference",
         lambda c: call_with(ref(CAP_ID) + MARK + s("secret") + i(1) + s("_count") + i(99) + SETITEMS),
         r"malformed body: SETITEMS on a Vault", needs_cap=True),
    Case("append_on_reference",
         lambda c: call_with(ref(CAP_ID) + i(1) + APPEND),
         r"malformed body: APPEND to a Vault", needs_cap=True),
    Case("appends_on_reference",
         lambda c: call_with(ref(CAP_ID) + MARK + i(1) + i(2) + APPENDS),
         r"malformed body: APPENDS to a Vault", needs_cap=True),
    Case("additems_on_reference",
         lambda c: call_with(ref(CAP_ID) + MARK + i(1) + ADDITEMS),
         r"malformed body: ADDITEMS to a Vault", needs_cap=True),
    Case("setitem_on_a_tuple", lambda c: call_with(tup(i(1)) + s("k") + i(1) + SETITEM),
         r"malformed body: SETITEM on a tuple"),
    Case("appends_without_a_target", lambda c: call_with(MARK + i(1) + APPENDS),
         r"APPENDS with nothing to add to"),
    # --- forged references and targets ---------------------------------------------
    Case("forged_ref_id", lambda c: call_with(ref(i(987654))), r"reference to unknown export id 987654",
         strict_too=True),
    Case("ref_id_negative", lambda c: call_with(ref(i(-1))), r"reference to unknown export id -1"),
    Case("ref_id_str", lambda c: call_with(ref(s("1"))), r"reference to unknown export id '1'"),
    Case("ref_id_zero", lambda c: call_with(ref(i(0))), r"reference to unknown export id 0"),
    Case("call_unknown_target", lambda c: call(target=424242), r"call to unknown export id 424242",
         stage="dispatch", strict_too=True),
    Case("call_target_zero", lambda c: call(target=0), r"call to export 0, which does not exist",
         stage="dispatch"),
    # --- answers and releases nobody asked for ----------------------------------------
    Case("return_unasked", lambda c: ret(777777, s("forged")),
         r"answer to unknown question 777777", stage="route", strict_too=True),
    Case("raise_unasked", lambda c: rais(777778, error_data()),
         r"answer to unknown question 777778", stage="route"),
    Case("release_unknown_id", lambda c: release(tup(tup(i(31337), i(1)))),
         r"release of unknown export id 31337", stage="release", strict_too=True),
    Case("release_over_release", lambda c: release(tup(tup(CAP_ID, i(1000)))),
         r"release of unknown export id \d+ \(count 1000\)", stage="release", needs_cap=True),
    Case("release_count_zero", lambda c: release(tup(tup(i(1), i(0)))),
         r"RELEASE count must be a positive int"),
    Case("release_not_pairs", lambda c: release(tup(i(1), i(2))),
         r"RELEASE pair must be \(id, count\)"),
    Case("release_not_a_tuple", lambda c: release(EMPTY_LIST), r"RELEASE must carry a tuple"),
    Case("release_with_a_reference", lambda c: release(tup(tup(ref(CAP_ID), i(1)))),
         r"a reference where only plain data may be", needs_cap=True),
    Case("hello_after_startup", lambda c: hello(1, tup(s("ok"), i(1), EMPTY_TUPLE)),
         r"unexpected message tag 5", stage="route"),
    # --- frame header -----------------------------------------------------------------
    Case("length_2gb", lambda c: struct.pack(">I", 0x7FFF_FFF0) + b"\x80\x05" + b"N" * 1000,
         r"frame of 2147483632 bytes exceeds the limit", stage="frame", strict_too=True),
    Case("length_4gb", lambda c: b"\xff\xff\xff\xff" + b"\x80\x05N.",
         r"frame of 4294967295 bytes exceeds the limit", stage="frame"),
    # --- nesting ------------------------------------------------------------------------
    Case("million_deep_tuples", lambda c: call_with(EMPTY_TUPLE + TUPLE1 * 1_000_000),
         r"nested deeper than 100 levels", strict_too=True),
    Case("million_deep_lists", lambda c: call_with(EMPTY_LIST * 1_000_000 + APPEND * 999_999),
         r"(nested deeper than 100 levels|message over budget)"),
    Case("deep_lists_small", lambda c: call_with(EMPTY_LIST * 500 + APPEND * 499),
         r"nested deeper than 100 levels"),
    Case("million_deep_mark_pop_tuple", lambda c: call_with(EMPTY_TUPLE + (MARK + POP + TUPLE) * 1000),
         rf"{_FORBIDDEN} POP"),
    Case("deep_tuple_set_item", lambda c: call_with(EMPTY_SET + MARK + EMPTY_TUPLE + TUPLE1 * 1_000_000 + ADDITEMS),
         r"nested deeper than 100 levels", strict_too=True),
    Case("deep_dicts", lambda c: call_with(EMPTY_DICT + (s("k") + EMPTY_DICT) * 5000 + SETITEM * 5000),
         r"nested deeper than 100 levels"),
    Case("deep_frozensets", lambda c: call_with(MARK * 50 + FROZENSET * 50), rf"{_FORBIDDEN} FROZENSET"),
    Case("deep_frozenset_records", lambda c: call_with(
        (MARK + s("v") + s("frozenset") + MARK) * 3000 + EMPTY_TUPLE + (TUPLE + TUPLE + BINPERSID) * 3000),
         r"nested deeper than 100 levels"),
    Case("deep_name", lambda c: call(name=EMPTY_TUPLE + TUPLE1 * 100_000), r"nested deeper than 100"),
    Case("huge_qid", lambda c: call(qid=u64(1 << 63)), r"CALL qid must be a positive int"),
    Case("huge_int_ref_id", lambda c: call_with(ref(i(10 ** 5000))),
         r"reference to unknown export id"),
    # --- pickle structure -----------------------------------------------------------------
    Case("truncated_pickle", lambda c: call()[:-3], r"malformed body: truncated pickle", strict_too=True),
    Case("truncated_length_arg", lambda c: ret_raw(PROTO + BINUNICODE + b"\xff\xff"), r"truncated pickle"),
    Case("truncated_string", lambda c: ret_raw(PROTO + BINUNICODE + b"\xff\xff\x00\x00xx" + STOP),
         r"truncated pickle"),
    Case("binbytes8_huge_claim", lambda c: ret_raw(PROTO + BINBYTES8 + struct.pack("<Q", 1 << 62) + b"xx."),
         rf"{_FORBIDDEN} BINBYTES8"),
    Case("bytearray8_huge_claim", lambda c: ret_raw(PROTO + BYTEARRAY8 + struct.pack("<Q", 1 << 62) + b"xx."),
         r"truncated pickle"),
    Case("frame_opcode_huge_claim", lambda c: ret_raw(PROTO + FRAME + struct.pack("<Q", 1 << 62) + NONE + STOP),
         r"truncated pickle \(FRAME longer than the body\)"),
    Case("frame_inside_a_frame", lambda c: ret_raw(PROTO + FRAME + struct.pack("<Q", 11) + NONE + FRAME
                                                  + struct.pack("<Q", 1) + STOP),
         r"FRAME at offset \d+ inside the previous frame"),
    Case("trailing_garbage", lambda c: call() + b"cos\nsystem\n", r"bytes after STOP"),
    Case("two_pickles", lambda c: call() + call(), r"\d+ bytes after STOP"),
    Case("not_a_message", lambda c: b"GET / HTTP/1.1\r\n", r"unknown message tag 71"),
    Case("empty_body", lambda c: b"", r"empty body"),
    Case("payload_not_a_pickle", lambda c: ret_raw(b"GET / HTTP/1.1\r\n"), r"not a pickle of protocol 5"),
    Case("protocol_6", lambda c: ret_raw(b"\x80\x06" + NONE + STOP), r"not a pickle of protocol 5"),
    Case("protocol_2", lambda c: ret_raw(b"\x80\x02" + NONE + STOP), r"not a pickle of protocol 5"),
    Case("proto_twice", lambda c: ret_raw(PROTO + PROTO + NONE + STOP), r"PROTO at offset"),
    Case("pop_mark_underflow", lambda c: ret_raw(PROTO + POP_MARK + NONE + STOP), rf"{_FORBIDDEN} POP_MARK"),
    Case("empty_stack_stop", lambda c: ret_raw(PROTO + STOP), r"malformed body: STOP with 0 values"),
    Case("two_values_at_stop", lambda c: ret_raw(PROTO + NONE + NONE + STOP), r"STOP with 2 values"),
    Case("open_mark_at_stop", lambda c: ret_raw(PROTO + MARK + NONE + STOP), r"STOP with an open MARK"),
    Case("tuple2_underflow", lambda c: ret_raw(PROTO + NONE + TUPLE2 + STOP), r"stack underflow"),
    Case("tuple_across_mark", lambda c: ret_raw(PROTO + framed(NONE + MARK + NONE + TUPLE2 + STOP)),
         r"stack underflow"),
    Case("dup_opcode", lambda c: ret_raw(PROTO + NONE + DUP + TUPLE2 + STOP), rf"{_FORBIDDEN} DUP"),
    Case("list_opcode", lambda c: call_with(MARK + i(1) + LIST), rf"{_FORBIDDEN} LIST"),
    Case("dict_opcode", lambda c: call_with(MARK + i(1) + i(2) + DICT), rf"{_FORBIDDEN} DICT"),
    Case("bad_utf8", lambda c: call_with(SHORT_BINUNICODE + b"\x02\xff\xfe"), r"invalid UTF-8"),
    Case("unhashable_key", lambda c: call_with(EMPTY_DICT + EMPTY_LIST + i(1) + SETITEM),
         r"TypeError: unhashable type"),
    # --- message shape ------------------------------------------------------------------
    Case("bad_tag", lambda c: bytes([9]) + body(tup(i(1))), r"unknown message tag 9", strict_too=True),
    Case("tag_zero", lambda c: bytes([0]) + body(NONE), r"unknown message tag 0"),
    Case("call_header_short", lambda c: bytes([T_CALL]) + u64(1) + u64(0), r"CALL header cut short"),
    Case("return_header_short", lambda c: bytes([T_RETURN]) + b"\x01\x00", r"RETURN header cut short"),
    Case("hello_header_short", lambda c: bytes([T_HELLO, 1]), r"HELLO header cut short"),
    Case("not_a_tuple", lambda c: call_raw(body(EMPTY_LIST)), r"CALL payload must be \(name, args, kwargs\), got list"),
    Case("empty_tuple", lambda c: call_raw(body(EMPTY_TUPLE)), r"CALL payload must be"),
    Case("payload_two_fields", lambda c: call_raw(body(tup(s("x"), EMPTY_TUPLE))), r"CALL payload must be"),
    Case("qid_zero", lambda c: call(qid=0), r"CALL qid must be a positive int"),
    Case("parent_huge", lambda c: call(parent=u64((1 << 64) - 5)), r"CALL parent must be"),
    Case("target_huge", lambda c: call(target=u64(1 << 62)), r"CALL target must be"),
    Case("kwargs_int_keys", lambda c: call(kwargs=dct((i(1), i(2)))), r"kwargs must be a dict with str keys"),
    Case("kwargs_list", lambda c: call(kwargs=EMPTY_LIST), r"kwargs must be a dict"),
    Case("args_list", lambda c: call(args=EMPTY_LIST + i(1) + APPEND), r"CALL args must be a tuple, got list"),
    Case("op_unknown", lambda c: call(op=99), r"CALL op 99 is unknown"),
    Case("name_int", lambda c: call(name=i(5)), r"CALL name must be None or a short str"),
    Case("name_too_long", lambda c: call(name=s("a" * 5000)), r"CALL name must be None or a short str"),
    Case("raise_qid_zero", lambda c: rais(0, NONE), r"RAISE qid must be"),
    # --- memo and extension registry ------------------------------------------------------
    Case("long_binput_huge_index", lambda c: ret_raw(PROTO + NONE + LONG_BINPUT + b"\xff\xff\xff\x7f" + STOP),
         rf"{_FORBIDDEN} LONG_BINPUT", strict_too=True),
    Case("binput", lambda c: ret_raw(PROTO + NONE + BINPUT + b"\x01" + STOP), rf"{_FORBIDDEN} BINPUT"),
    Case("binget_unset", lambda c: call_with(BINGET + b"\x05"), rf"{_FORBIDDEN} BINGET"),
    Case("long_binget_unset", lambda c: call_with(LONG_BINGET + b"\xff\xff\xff\x7f"), rf"{_FORBIDDEN} LONG_BINGET"),
    Case("put_text", lambda c: ret_raw(PROTO + NONE + PUT + b"0\n" + STOP), rf"{_FORBIDDEN} PUT"),
    Case("get_text", lambda c: call_with(GET + b"0\n"), rf"{_FORBIDDEN} GET"),
    Case("memoize_then_binget", lambda c: call_with(s("x") + MEMOIZE + POP + BINGET + b"\x00"),
         rf"{_FORBIDDEN} MEMOIZE"),
    Case("ext1", lambda c: call_with(EXT1 + b"\x01"), rf"{_FORBIDDEN} EXT1"),
    Case("ext2", lambda c: call_with(EXT2 + b"\x01\x00"), rf"{_FORBIDDEN} EXT2"),
    Case("ext4", lambda c: call_with(EXT4 + b"\x01\x00\x00\x00"), rf"{_FORBIDDEN} EXT4"),
    # --- text-protocol opcodes and out-of-band buffers --------------------------------------
    Case("int_text", lambda c: call_with(INT + b"1\n"), rf"{_FORBIDDEN} INT"),
    Case("long_text_5000_digits", lambda c: call_with(LONG + b"9" * 5000 + b"L\n"), rf"{_FORBIDDEN} LONG "),
    Case("string_text", lambda c: call_with(STRING + b"'x'\n"), rf"{_FORBIDDEN} STRING"),
    Case("unicode_text", lambda c: call_with(UNICODE + b"x\n"), rf"{_FORBIDDEN} UNICODE"),
    Case("float_text", lambda c: call_with(FLOAT + b"1.5\n"), rf"{_FORBIDDEN} FLOAT"),
    Case("short_binstring", lambda c: call_with(SHORT_BINSTRING + b"\x01x"), rf"{_FORBIDDEN} SHORT_BINSTRING"),
    Case("binstring", lambda c: call_with(BINSTRING + b"\x01\x00\x00\x00x"), rf"{_FORBIDDEN} BINSTRING"),
    Case("next_buffer", lambda c: call_with(NEXT_BUFFER), rf"{_FORBIDDEN} NEXT_BUFFER"),
    Case("readonly_buffer", lambda c: call_with(by(b"x") + READONLY_BUFFER), rf"{_FORBIDDEN} READONLY_BUFFER"),
    Case("persid_text", lambda c: call_with(PERSID + b"r 1\n"), rf"{_FORBIDDEN} PERSID"),
    # --- persistent ids ---------------------------------------------------------------
    Case("pid_not_tuple", lambda c: call_with(i(5) + BINPERSID), r"malformed reference"),
    Case("pid_empty_tuple", lambda c: call_with(EMPTY_TUPLE + BINPERSID), r"malformed reference"),
    Case("pid_kind_int", lambda c: call_with(pid(i(1), i(1))), r"malformed reference"),
    Case("pid_unknown_kind", lambda c: call_with(pid(s("z"), i(1))), r"unknown reference kind 'z'"),
    Case("pid_kind_f", lambda c: call_with(pid(s("f"), by(b"cos\nsystem\n"))), r"unknown reference kind 'f'"),
    Case("pid_r_three_fields", lambda c: call_with(pid(s("r"), i(1), i(2))), r"unknown reference kind 'r'"),
    Case("v_uuid_too_big", lambda c: call_with(vrec("UUID", i(2 ** 200))), r"bad UUID record", strict_too=True),
    Case("v_uuid_str", lambda c: call_with(vrec("UUID", s("12345678-1234-5678-1234-567812345678"))),
         r"bad UUID record"),
    Case("v_decimal_1mb", lambda c: call_with(vrec("Decimal", s("1" * 10 ** 6))), r"bad Decimal record"),
    Case("v_decimal_garbage", lambda c: call_with(vrec("Decimal", s("12abc"))), r"bad Decimal record"),
    Case("v_datetime_bad_iso", lambda c: call_with(vrec("datetime", tup(s("not a date"), i(0), NONE))),
         r"bad datetime record"),
    Case("v_datetime_fold_2", lambda c: call_with(vrec("datetime", tup(s("2020-01-01T00:00"), i(2), NONE))),
         r"bad datetime record"),
    Case("v_datetime_tz_path", lambda c: call_with(vrec("datetime", tup(s("2020-01-01T00:00"), i(0),
                                                                         tup(s("zi"), s("../../../etc/passwd")))))
         , r"bad time zone key"),
    Case("v_datetime_tz_abs", lambda c: call_with(vrec("datetime", tup(s("2020-01-01T00:00"), i(0),
                                                                        tup(s("zi"), s("/etc/localtime"))))),
         r"bad time zone key"),
    Case("v_datetime_tz_offset_types", lambda c: call_with(vrec("datetime", tup(
        s("2020-01-01T00:00"), i(0), tup(s("off"), s("1"), i(0), i(0), NONE)))), r"bad time zone offset record"),
    Case("v_datetime_not_tuple", lambda c: call_with(vrec("datetime", s("2020-01-01"))), r"bad datetime record"),
    Case("v_date_long", lambda c: call_with(vrec("date", s("2020-01-01" * 100))), r"bad date record"),
    Case("v_timedelta_overflow", lambda c: call_with(vrec("timedelta", tup(i(10 ** 12), i(0), i(0)))),
         r"bad timedelta record"),
    Case("v_complex_strs", lambda c: call_with(vrec("complex", tup(s("1"), s("2")))), r"bad complex record"),
    Case("v_fraction_zero_den", lambda c: call_with(vrec("Fraction", tup(i(1), i(0)))), r"bad Fraction record"),
    Case("v_timezone_garbage", lambda c: call_with(vrec("timezone", tup(s("nope")))), r"bad time zone record"),
    Case("v_unknown_kind", lambda c: call_with(vrec("os.system", s("x"))), r"unknown value record kind"),
    Case("v_vt_not_registered",
         lambda c: call_with(vrec("vt", tup(s("NotRegistered"), EMPTY_TUPLE, EMPTY_TUPLE, NEWFALSE))),
         r"value type 'NotRegistered' is not registered on the host", strict_too=True),
    Case("v_vt_bad_payload", lambda c: call_with(vrec("vt", s("os.system"))), r"malformed value type record"),
    Case("v_two_fields", lambda c: call_with(pid(s("v"), s("UUID"))), r"unknown reference kind 'v'"),
    # --- interface descriptors of sandbox capabilities --------------------------------
    *[Case(f"desc_dunder_{d.strip('_')}",
           (lambda d: lambda c: call_with(cref(1, 901, descriptor(dunders=tup(member(d))))))(d),
           rf"special member '{d}' is not allowed")
      for d in ("__del__", "__init__", "__reduce__", "__getattribute__", "__class__", "__setattr__")],
    Case("desc_dunder_as_method", lambda c: call_with(cref(1, 901, descriptor(methods=tup(member("__del__"))))),
         r"special member '__del__' is not allowed", strict_too=True),
    Case("desc_non_identifier", lambda c: call_with(cref(1, 901, descriptor(methods=tup(member("a b"))))),
         r"bad interface descriptor: member name 'a b'"),
    Case("desc_keyword_name", lambda c: call_with(cref(1, 901, descriptor(methods=tup(member("import"))))),
         r"bad interface descriptor: member name 'import'"),
    Case("desc_cb_name", lambda c: call_with(cref(1, 901, descriptor(methods=tup(member("_cb_chan"))))),
         r"bad interface descriptor: member name '_cb_chan'"),
    Case("desc_100k_members",
         lambda c: call_with(cref(1, 901, descriptor(methods=tup(*[member(f"m{n}") for n in range(100_000)])))),
         r"(more than 2048 members|message over budget)"),
    Case("desc_ref_inside",
         lambda c: call_with(cref(1, 901, tup(s("Evil"), s(""), tup(tup(s("m"), ref(CAP_ID), s("()"))),
                                            EMPTY_TUPLE, EMPTY_TUPLE, NEWFALSE, s(""), NEWTRUE))),
         r"bad interface descriptor: member doc must be a str", needs_cap=True),
    Case("desc_seven_fields", lambda c: call_with(cref(1, 901, tup(s("Evil"), s(""), EMPTY_TUPLE, EMPTY_TUPLE,
                                                                 EMPTY_TUPLE, NEWFALSE, s("")))),
         r"expected a tuple of 8 fields"),
    Case("desc_flag_not_bool", lambda c: call_with(cref(1, 901, tup(s("Evil"), s(""), EMPTY_TUPLE, EMPTY_TUPLE,
                                                                  EMPTY_TUPLE, i(1), s(""), NEWTRUE))),
         r"flags must be bools"),
    Case("desc_huge_doc", lambda c: call_with(cref(1, 901, tup(s("Evil"), s("d" * 100_000), EMPTY_TUPLE,
                                                             EMPTY_TUPLE, EMPTY_TUPLE, NEWFALSE, s(""), NEWTRUE))),
         r"doc must be a str of at most"),
    Case("undescribed_interface", lambda c: call_with(cref(1, 77, None)), r"reference to undescribed interface 77"),
    Case("described_twice",
         lambda c: call_with(tup(cref(1, 903, descriptor()), cref(2, 903, descriptor()))),
         r"interface 903 described twice"),
    Case("cref_negative_id", lambda c: call_with(cref(-1, 1, descriptor())), r"malformed capability reference"),
    # --- exception data in RAISE -----------------------------------------------------
    Case("raise_bad_types", lambda c: rais(HQID, tup(i(1), s("args"), NONE, NONE, NONE)),
         r"malformed error data", stage="error", needs_qid=True),
    Case("raise_10mb_message", lambda c: rais(HQID, error_data(message=s("m" * 10_000_000))),
         r"malformed error data", stage="error", needs_qid=True),
    Case("raise_unknown_extra", lambda c: rais(HQID, error_data(extra=dct((s("payload"), by(b"x" * 1000))))),
         r"malformed error data: unknown extra field", stage="error", needs_qid=True),
    Case("raise_huge_extra_filename", lambda c: rais(HQID, error_data(extra=dct((s("filename"), s("f" * 5000))))),
         r"malformed error data: bad file name", stage="error", needs_qid=True),
    Case("raise_many_args", lambda c: rais(HQID, error_data(args=tup(*[i(1)] * 100))),
         r"malformed error data", stage="error", needs_qid=True),
    Case("raise_reference_in_data", lambda c: rais(HQID, error_data(args=tup(ref(CAP_ID)))),
         r"a reference where only plain data may be", needs_qid=True, needs_cap=True),
    Case("raise_frames_too_many", lambda c: rais(HQID, error_data(extra=dct((s("frames"), tup(
        *[tup(s("f"), i(1), s("g"), s(""))] * 65)))))
         , r"malformed error data: bad frames", stage="error", needs_qid=True),
    # --- budgets: what decoding may cost the host -------------------------------------
    Case("hash_flood_set", lambda c: call_with(EMPTY_SET + b"".join(
        MARK + b"".join(i(k * ((1 << 61) - 1)) for k in range(j, j + 1000)) + ADDITEMS
        for j in range(1, 30_000, 1000))), r"share a hash", strict_too=True),
    Case("hash_flood_dict", lambda c: call_with(EMPTY_DICT + MARK + b"".join(
        i(k * ((1 << 61) - 1)) + NONE for k in range(1, 1000)) + SETITEMS), r"share a hash"),
    Case("hash_flood_frozenset_of_tuples", lambda c: call_with(vrec("frozenset", EMPTY_SET + MARK + b"".join(
        tup(i(k * ((1 << 61) - 1))) for k in range(1, 200)) + ADDITEMS)), r"share a hash"),
    Case("frozenset_record_not_a_tuple", lambda c: call_with(vrec("frozenset", EMPTY_LIST)),
         r"bad frozenset record"),
    Case("empty_sets_200k", lambda c: call_with(MARK + EMPTY_SET * 200_000 + TUPLE), r"message over budget",
         strict_too=True),
    Case("empty_lists_in_lists", lambda c: call_with(EMPTY_LIST + MARK + (EMPTY_LIST + MARK + EMPTY_LIST * 1000
                                                                       + APPENDS) * 300 + APPENDS),
         r"message over budget"),
    Case("int_over_budget", lambda c: call_with(LONG4 + struct.pack("<I", 9000) + b"\x01" * 9000),
         r"over budget: an int of 9000 bytes"),
    Case("fraction_200kb_parts", lambda c: call_with(vrec("Fraction", tup(i(3 ** 5000), i(7 ** 5000)))),
         r"bad Fraction record", strict_too=True),
    Case("fraction_negative_denominator", lambda c: call_with(vrec("Fraction", tup(i(1), i(-3)))),
         r"bad Fraction record"),
    Case("decimal_huge_exponent", lambda c: call_with(vrec("Decimal", s("1e999999999"))), r"bad Decimal record"),
    Case("ndarray_size_mismatch",
         lambda c: call_with(vrec("ndarray", tup(s("<f8"), tup(i(1000)), by(b"\0" * 16)))), r"bad ndarray record"),
    Case("ndarray_object_dtype",
         lambda c: call_with(vrec("ndarray", tup(s("|O"), tup(i(1)), by(b"\0" * 8)))), r"bad ndarray record"),
    # --- found attacking the decoder (see docs/security.rst) ---------------------------
    # one batch of 200,000 set items: a single set.update holding the GIL
    Case("additems_200k_in_one_batch", lambda c: ret(HQID, EMPTY_SET + MARK + b"".join(
        BININT + struct.pack("<i", k) for k in range(65536, 265536)) + ADDITEMS),
         r"ADDITEMS of 200000 items", needs_qid=True, strict_too=True),
    Case("setitems_100k_in_one_batch", lambda c: ret(HQID, EMPTY_DICT + MARK + b"".join(
        BININT + struct.pack("<i", k) + NONE for k in range(65536, 165536)) + SETITEMS),
         r"SETITEMS of 100000 pairs", needs_qid=True),
    # APPEND after APPEND: 2 bytes an item, one Python round each (was 560 ms/MiB)
    Case("append_each_item", lambda c: ret(HQID, EMPTY_LIST + (NONE + APPEND) * 300_000),
         r"APPEND to a list that has items", needs_qid=True, strict_too=True),
    Case("appends_after_short_batch", lambda c: ret(HQID, EMPTY_LIST + (MARK + i(1) + i(2) + APPENDS) * 2),
         r"APPENDS after a batch of fewer than 1000 items", needs_qid=True),
    # MARK then TUPLE around nothing: two bytes, one shared empty tuple, no memory charged
    Case("mark_tuple_of_nothing", lambda c: ret(HQID, MARK + (MARK + TUPLE) * 300_000 + TUPLE),
         r"a tuple of 0 items written with MARK and TUPLE", needs_qid=True, strict_too=True),
    # BININT2 of small values: three bytes, a shared int, no memory charged
    Case("binint2_small_values", lambda c: ret(HQID, MARK + (BININT2 + b"\x05\x00") * 300_000 + TUPLE),
         r"BININT2 of 5", needs_qid=True),
    # open MARKs: eight bytes of host memory each, never charged
    Case("marks_without_end", lambda c: ret(HQID, MARK * 1_000_000 + NONE),
         r"nested deeper than 100 levels", needs_qid=True, strict_too=True),
    # opcodes outside frames: the stop hook and the budgets are checked at frames
    Case("unframed_body", lambda c: ret_raw(PROTO + MARK + NONE * 1000 + TUPLE + STOP),
         r"more than 3 bytes of opcodes outside a frame", needs_qid=True, strict_too=True),
    Case("frame_of_a_megabyte", lambda c: ret_raw(PROTO + FRAME + struct.pack("<Q", 1 << 20) + MARK
                                                 + NONE * ((1 << 20) - 3) + TUPLE + STOP),
         r"a FRAME of 1048576 bytes", needs_qid=True),
    Case("frame_of_two_bytes", lambda c: ret_raw(PROTO + FRAME + struct.pack("<Q", 2) + NONE + STOP),
         r"a FRAME of 2 bytes", needs_qid=True),
    Case("short_bytes_outside_frames", lambda c: ret_raw(PROTO + BINBYTES + struct.pack("<I", 1000) + b"x" * 1000
                                                        + STOP),
         r"1000 bytes of BINBYTES outside a frame", needs_qid=True),
    # a string of lone surrogates: ~280 ns each to decode, one C call for the string
    Case("lone_surrogates_string", lambda c: ret(HQID, BINUNICODE + struct.pack("<I", 3 * 2_000_000)
                                                 + b"\xed\xa0\x80" * 2_000_000),
         r"value records, references and lone surrogates would take the host more than", needs_qid=True,
         strict_too=True),
    Case("lone_surrogates_short_strings", lambda c: ret(HQID, MARK + (SHORT_BINUNICODE + b"\xff"
                                                                      + b"\xed\xa0\x80" * 85) * 30_000 + TUPLE),
         r"lone surrogates would take the host more than", needs_qid=True),
    # one set item holding 2 million values: hashing it is one long C call
    Case("tuple_key_of_100k_values", lambda c: ret(HQID, EMPTY_SET + MARK + MARK + NONE * 100_000 + TUPLE + ADDITEMS),
         r"a dict key or set item holding 100000 values", needs_qid=True, strict_too=True),
    Case("nested_dict_key_of_120k_values", lambda c: ret(HQID, EMPTY_DICT + MARK + (NONE * 3 + TUPLE3) * 30_000
                                                         + TUPLE + NONE + SETITEM),
         r"a dict key or set item holding 120000 values", needs_qid=True),
    # frozensets are records of a set: a tuple would skip the per-batch checks
    Case("frozenset_record_of_a_tuple", lambda c: ret(HQID, vrec("frozenset", tup(*[i(k) for k in range(10)]))),
         r"bad frozenset record", needs_qid=True),
    # sandbox capabilities with 2047-member interfaces: a proxy class each, uncharged
    Case("interface_member_bomb", lambda c: ret(HQID, MARK + b"".join(
        cref(50_000 + k, 50_000 + k, descriptor(methods=MARK + b"".join(member(f"m{j}") for j in range(2047))
                                               + TUPLE)) for k in range(60)) + TUPLE),
         r"message over budget", needs_qid=True, strict_too=True),
    # ndarray shapes of 32 dimensions of 8 KiB ints: big-int products before any check
    Case("ndarray_huge_dimensions", lambda c: ret(HQID, MARK + vrec("ndarray", tup(s("<f8"), MARK + i(1 << 65000)
                                                                                   * 32 + TUPLE, by(b""))) * 8
                                                  + TUPLE),
         r"bad ndarray record", needs_qid=True),
    # a string that quadruples in host memory, past the limit for one string
    Case("string_over_max_string_bytes", lambda c: ret(HQID, BINUNICODE + struct.pack("<I", 20_000_004)
                                                       + b"a" * 20_000_000 + "\U0001f600".encode()),
         r"a string of 20000001 characters would take 76 MiB", needs_qid=True),
]

CASES_BY_NAME = {c.name: c for c in CASES}
assert len(CASES_BY_NAME) == len(CASES), "duplicate case names"


# --------------------------------------------------------------------------- the attacker

#: Sandbox source defining ``_channel()``: the sandbox's own Channel, found by walking
#: the interpreter's frames (``sys`` must be imported by the source it is put in).
FIND_CHANNEL_SRC = r'''
def _channel():
    f = sys._getframe()
    while f is not None:
        me = f.f_locals.get("self")
        if type(me).__name__ == "Channel":
            return me
        f = f.f_back
    raise RuntimeError("channel not found")
'''

#: Loaded into the sandbox with ``Sandbox.load(ATTACK_SRC, "hostile_attack")``: it finds
#: its own channel the way untrusted code can (walking the interpreter's frames) and
#: writes raw bytes to the host behind the runtime's back.
ATTACK_SRC = r'''
import os, sys, struct

_pending = []
''' + FIND_CHANNEL_SRC + r'''
def stash(data, cap_name=None, raw=False, pad=0):
    """Keep the attack bytes; returns how many will be written."""
    if cap_name is not None:
        import capbridge
        eid = capbridge.grants[cap_name]._cb_id
        data = data.replace(CAP_MARK, struct.pack("<i", eid)).replace(HCAP_MARK, struct.pack(">I", eid))
    out = data if raw else struct.pack(">I", len(data)) + data
    out += b"\0" * pad
    _pending[:] = [out]
    return len(out)

def fire(sleep=30):
    """Write the stashed bytes straight onto the channel, then keep the host busy."""
    ch = _channel()
    data = _pending.pop()
    qid = ch._local.serving[-1]
    data = data.replace(QID_MARK, struct.pack("<i", qid)).replace(HQID_MARK, struct.pack(">I", qid))
    with ch._send_lock:
        view = memoryview(data)
        while view:
            view = view[os.write(ch.wfd, view):]
    import time
    time.sleep(sleep)
    return "not killed"
'''.replace("HCAP_MARK", repr(HCAP_MARK)).replace("HQID_MARK", repr(HQID_MARK)) \
    .replace("CAP_MARK", repr(CAP_MARK)).replace("QID_MARK", repr(QID_MARK))
