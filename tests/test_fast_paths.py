"""The host reader's short cuts read exactly what its full reader reads.

A small answer that is one of the commonest values is a table lookup
(``COMMON_ANSWERS``); a short CALL payload read once is remembered and read again by
lookup. Both must give the same messages as the full reader, keep every header check,
stay bounded whatever the sandbox sends, and leave nothing shared that a callee could
change.
"""

from __future__ import annotations

import os
import struct
import sys
import tracemalloc

import pytest

from capbridge import ProtocolError, expose
from capbridge._decoder import COMMON_ANSWERS, NOT_SMALL, small_answer
from capbridge._host_session import _MEMO_CALL, MAX_CALL_MEMO, HostSession
from capbridge._protocol import CALL_HEADER, Op, Tag
from capbridge._sandbox_session import SandboxSession

sys.path.insert(0, os.path.dirname(__file__))
import hostile as H  # noqa: E402

CALL, RETURN = int(Tag.CALL), int(Tag.RETURN)


def _call_body(name, args, qid=5, target=0, op=int(Op.CALL), kwargs=None):
    return SandboxSession().encode_plain((CALL, qid, 0, target, op, name, args, kwargs or {}))


def test_common_answers_are_what_the_sandbox_writes_and_read_as_small_answer_reads():
    sandbox = SandboxSession()
    for payload, value in COMMON_ANSWERS.items():
        assert sandbox.encode_plain((RETURN, 1, value))[9:] == payload
        assert sandbox.plain_frame((RETURN, 1, value))[13:] == payload
        read = small_answer(payload, 0)
        assert read is not NOT_SMALL and read == value and type(read) is type(value)
        msg = HostSession().decode(sandbox.encode_plain((RETURN, 7, value)))
        assert msg == (RETURN, 7, value) and type(msg[2]) is type(value)


def test_a_common_answer_still_has_its_header_checked():
    body = SandboxSession().encode_plain((RETURN, 7, None))
    for bad_qid in (0, 1 << 62, (1 << 64) - 1):
        bad = bytes([RETURN]) + struct.pack(">Q", bad_qid) + body[9:]
        with pytest.raises(ProtocolError):
            HostSession().decode(bad)


def test_a_common_answer_split_across_reads_decodes_the_same():
    body = SandboxSession().encode_plain((RETURN, 7, True))
    assert HostSession().decode(bytearray(body)) == (RETURN, 7, True)
    assert HostSession().decode(b"\0\0\0\0" + body, 4) == (RETURN, 7, True)


@pytest.mark.parametrize("args", [(), (1, 2), ("a", None, True, 2.5, b"x", -7, 1 << 40), ("é" * 10,)])
def test_a_remembered_call_reads_as_it_did_the_first_time(args):
    host = HostSession()
    body = _call_body("add", args)
    first = host.decode(body)
    assert first == (CALL, 5, 0, 0, int(Op.CALL), "add", args, {})
    assert len(host._calls) == (1 if len(body) <= _MEMO_CALL else 0)
    first[7]["mutated"] = 1  # a callee's kwargs are its own
    again = host.decode(body)
    assert again == (CALL, 5, 0, 0, int(Op.CALL), "add", args, {})
    assert [type(a) for a in again[6]] == [type(a) for a in args]


def test_a_remembered_payload_under_another_header_is_checked_again():
    host = HostSession()
    body = _call_body("add", (1, 2))
    host.decode(body)
    assert host._calls
    payload = body[26:]
    for qid, parent, target, op in ((0, 0, 0, 0), (5, 1 << 62, 0, 0), (5, 0, 1 << 62, 0), (5, 0, 0, 99)):
        head = CALL_HEADER.pack(CALL, qid, parent, target, op)
        with pytest.raises(ProtocolError):
            host.decode(head + payload)
    assert host.decode(CALL_HEADER.pack(CALL, 6, 0, 3, int(Op.GET)) + payload)[:5] == (CALL, 6, 0, 3, int(Op.GET))


def test_a_payload_one_byte_off_a_remembered_one_is_read_afresh():
    host = HostSession()
    body = _call_body("add", (1, 2))
    host.decode(body)
    for i in range(26, len(body)):
        for b in (0, 0x2E, 0x4B, 0xFF):
            if body[i] == b:
                continue
            bad = body[:i] + bytes([b]) + body[i + 1:]
            try:
                msg = host.decode(bad)
            except ProtocolError:
                continue
            # Whatever reads must be what the full reader makes of those bytes.
            assert msg == HostSession().decode(bad)


def test_the_call_memo_is_bounded_whatever_the_sandbox_sends():
    host = HostSession()
    bodies = []
    for i in range(MAX_CALL_MEMO * 4):
        args = tuple(chr(0x100 + (i * 131 + k * 7) % 5000) for k in range(14))
        body = _call_body(f"n{i}", args)
        assert len(body) <= _MEMO_CALL
        bodies.append(body)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for body in bodies:
            host.decode(body)
            assert len(host._calls) <= MAX_CALL_MEMO
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 300 * 1024  # the memo (about 180 KiB at most) and the 512 names small_call keeps
    long_body = _call_body("add", ("x" * 200,))
    host.decode(long_body)
    assert long_body[26:] not in host._calls


class Calc:
    def __init__(self) -> None:
        self.seen: list = []

    @expose
    def add(self, a, b):
        self.seen.append((a, b))
        return a + b


def test_a_sandbox_filling_the_memo_gets_correct_answers(sandbox_factory):
    calc = Calc()
    sb = sandbox_factory({"calc": calc})
    n = MAX_CALL_MEMO * 3
    total = sb.exec(
        "import capbridge\n"
        "calc = capbridge.grants['calc']\n"
        f"_result = [calc.add(i, -i // 2) for i in range({n})] + [calc.add(1, 2) for i in range(50)]\n"
    )
    del total
    got = sb.eval("_result")
    assert got == [i + (-i // 2) for i in range(n)] + [3] * 50
    assert calc.seen[:n] == [(i, -i // 2) for i in range(n)]
    assert len(sb._session._calls) <= MAX_CALL_MEMO


def test_a_remembered_payload_aimed_at_an_unknown_export_kills_the_sandbox(sandbox_factory):
    calc = Calc()
    sb = sandbox_factory({"calc": calc})
    sb.load(H.FIND_CHANNEL_SRC + "import sys, os\n", name="finder")
    sb.exec(
        "import capbridge, finder, os\n"
        "calc = capbridge.grants['calc']\n"
        "for i in range(3):\n"
        "    calc.add(1, 2)\n"
        "def fire():\n"
        "    ch = finder._channel()\n"
        "    qid = ch._local.serving[-1]\n"
        "    data = ch.session.call_frame(10 ** 6, qid, 0x7FFF0000, 0, 'add', (1, 2), {})\n"
        "    with ch._send_lock:\n"
        "        os.write(ch.wfd, data)\n"
        "    import time\n"
        "    time.sleep(30)\n"
    )
    assert sb._session._calls  # the honest call's payload is remembered
    with pytest.raises(ProtocolError):
        sb.eval("fire()")
    assert calc.seen == [(1, 2)] * 3
    with pytest.raises(Exception):
        sb.eval("1")


@pytest.mark.parametrize("session", [HostSession, SandboxSession])
def test_return_frames_of_small_values_are_what_plain_frame_writes(session):
    for value in [None, True, False, 0, 1, 255, 256, -1, 1 << 70, "", "x", b"", 2.5]:
        a, b = session(), session()
        assert a.return_frame(9, value) == b.plain_frame((RETURN, 9, value))
        assert a.bytes_out == b.bytes_out
        assert HostSession().decode(SandboxSession().return_frame(9, value)[4:]) == (RETURN, 9, value)
