"""Unit tests of the sans-IO wire layer: FrameReader and check_message."""

from __future__ import annotations

import struct

import pytest

from capbridge import ProtocolError
from capbridge._protocol import HEADER, NEED_DATA, PROTOCOL_VERSION, FrameReader, Op, Tag, check_message, frame


def _frames(*bodies: bytes) -> bytes:
    return b"".join(frame(b) for b in bodies)


# --------------------------------------------------------------------------- FrameReader


def test_frame_prefixes_big_endian_length():
    assert frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert HEADER.size == 4


def test_empty_reader_needs_data():
    r = FrameReader(100)
    assert r.next_frame() is NEED_DATA
    assert r.wanted() == 4
    assert r.buffered() == 0


def test_byte_by_byte_feeds():
    bodies = [b"hello", b"", b"x" * 300, b"\x00\xff"]
    stream = _frames(*bodies)
    r = FrameReader(1000)
    out = []
    for k in range(len(stream)):
        r.feed(stream[k : k + 1])
        while True:
            body = r.next_frame()
            if body is NEED_DATA:
                break
            out.append(body)
    assert out == bodies
    assert r.buffered() == 0


def test_several_frames_in_one_feed():
    bodies = [bytes([n]) * n for n in range(1, 20)]
    r = FrameReader(1000)
    r.feed(_frames(*bodies) + b"\x00\x00")  # and half a header
    got = []
    while (body := r.next_frame()) is not NEED_DATA:
        got.append(body)
    assert got == bodies
    assert r.buffered() == 2
    assert r.wanted() == 2
    r.feed(b"\x00\x03ab")
    assert r.next_frame() is NEED_DATA
    assert r.wanted() == 1
    r.feed(b"c")
    assert r.next_frame() == b"abc"


def test_wanted_counts_the_missing_body():
    r = FrameReader(1000)
    r.feed(b"\x00\x00\x00\x0a" + b"12345")
    assert r.next_frame() is NEED_DATA
    assert r.wanted() == 5


def test_limit_is_inclusive():
    r = FrameReader(10)
    r.feed(frame(b"x" * 10))
    assert r.next_frame() == b"x" * 10


def test_size_limit_checked_from_the_header_alone():
    r = FrameReader(10)
    r.feed(b"\x00\x00\x00\x0b")  # 11 > 10: no body byte needed to refuse
    with pytest.raises(ProtocolError, match=r"frame of 11 bytes exceeds the limit of 10 bytes"):
        r.next_frame()


def test_huge_claim_refused_without_allocating():
    r = FrameReader(64 * 1024 * 1024)
    r.feed(struct.pack(">I", 0xFFFF_FFFF))
    with pytest.raises(ProtocolError, match=r"4294967295 bytes exceeds"):
        r.next_frame()


def test_error_is_sticky():
    r = FrameReader(10)
    r.feed(frame(b"ok") + b"\x00\x00\x01\x00")
    assert r.next_frame() == b"ok"
    with pytest.raises(ProtocolError) as first:
        r.next_frame()
    with pytest.raises(ProtocolError) as again:
        r.next_frame()
    with pytest.raises(ProtocolError) as on_feed:
        r.feed(frame(b"fine"))
    assert again.value is first.value and on_feed.value is first.value


def test_body_is_an_independent_copy():
    r = FrameReader(100)
    r.feed(frame(b"abc"))
    body = r.next_frame()
    r.feed(frame(b"zzz"))
    assert body == b"abc" and type(body) is bytes


def test_feed_accepts_memoryview():
    r = FrameReader(100)
    r.feed(memoryview(frame(b"mv")))
    assert r.next_frame() == b"mv"


# --------------------------------------------------------------------------- check_message

GOOD_CALL = (1, 5, 0, 3, int(Op.CALL), "method", (1, "a"), {"k": 2})


def test_good_messages_pass_unchanged():
    for msg in [
        GOOD_CALL,
        (1, 5, 2, 0, int(Op.GET), None, (), {}),
        (2, 5, "any value"),
        (3, 5, ("ValueError", (), "m", "", {})),
        (4, ((1, 1), (2, 5))),
        (4, ()),
        (5, PROTOCOL_VERSION, ("ok", 1, ())),
    ]:
        assert check_message(msg) is msg
    for op in Op:
        check_message((1, 1, 0, 1, int(op), "x", (), {}))


def _call(**kw):
    fields = dict(zip(["tag", "qid", "parent", "target", "op", "name", "args", "kwargs"], GOOD_CALL))
    fields.update(kw)
    return tuple(fields.values())


@pytest.mark.parametrize("msg, match", [
    ([1, 2], r"expected a tuple, got list"),
    ((), r"expected a tuple"),
    ("CALL", r"expected a tuple, got str"),
    ((0,), r"unknown message tag 0"),
    ((6, 1), r"unknown message tag 6"),
    ((True, 1, 0, 1, 0, "x", (), {}), r"message tag"),
    ((1.0, 1, 0, 1, 0, "x", (), {}), r"message tag"),
    ((Tag.CALL,) + GOOD_CALL[1:], r"message tag"),  # an IntEnum is not an int
    (GOOD_CALL[:-1], r"CALL has 7 fields, expected 8"),
    (GOOD_CALL + (None,), r"CALL has 9 fields"),
    (_call(qid=0), r"CALL qid must be a positive int"),
    (_call(qid=-1), r"CALL qid must be a positive int"),
    (_call(qid=1 << 62), r"CALL qid must be a positive int"),
    (_call(qid="1"), r"CALL qid must be a positive int, got str"),
    (_call(qid=True), r"CALL qid must be a positive int, got bool"),
    (_call(parent=-1), r"CALL parent"),
    (_call(target=None), r"CALL target"),
    (_call(op=5), r"CALL op 5 is unknown"),
    (_call(op="0"), r"CALL op '0' is unknown"),
    (_call(name=b"x"), r"CALL name must be None or a short str"),
    (_call(name="x" * 257), r"CALL name must be None or a short str"),
    (_call(args=[1]), r"CALL args must be a tuple, got list"),
    (_call(args=None), r"CALL args must be a tuple, got NoneType"),
    (_call(kwargs={1: 2}), r"CALL kwargs must be a dict with str keys"),
    (_call(kwargs=[("a", 1)]), r"CALL kwargs must be a dict"),
    ((2, 1), r"RETURN has 2 fields"),
    ((2, 0, None), r"RETURN qid"),
    ((2, "1", None), r"RETURN qid"),
    ((3, 1), r"RAISE has 2 fields"),
    ((3, None, None), r"RAISE qid"),
    ((4,), r"RELEASE must carry a tuple"),
    ((4, [(1, 1)]), r"RELEASE must carry a tuple"),
    ((4, ((1, 1), 2)), r"RELEASE pair must be \(id, count\)"),
    ((4, ((1, 1, 1),)), r"RELEASE pair must be"),
    ((4, ((-1, 1),)), r"RELEASE id"),
    ((4, ((0, 0),)), r"RELEASE count"),
    ((4, ((1, 0),)), r"RELEASE count"),
    ((4, ((1, -3),)), r"RELEASE count"),
    ((5, "1", None), r"HELLO must be"),
    ((5, 1), r"HELLO must be"),
])
def test_bad_messages(msg, match):
    with pytest.raises(ProtocolError, match=match) as info:
        check_message(msg)
    assert str(info.value).startswith("malformed message")


def test_kwarg_name_subclass_of_str_is_refused():
    class S(str):
        pass

    with pytest.raises(ProtocolError, match="kwargs"):
        check_message(_call(kwargs={S("k"): 1}))


def test_error_message_is_short_for_huge_fields():
    with pytest.raises(ProtocolError) as info:
        check_message(_call(qid="q" * 1_000_000))
    assert len(str(info.value)) < 200
