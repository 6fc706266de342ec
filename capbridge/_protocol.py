"""The wire protocol, without I/O: frames in, messages out.

A frame is a 4-byte big-endian body length followed by the body. The length is
checked against the frame limit before a byte of the body is kept.

A body is a fixed binary header (the tag and the message's ids, big-endian)
followed by a pickle of the rest (the payload). The header is read with one
``struct`` call; only the payload goes through a decoder, and the host's decoder of
sandbox payloads knows which call (and which capability) a payload belongs to
before it reads a byte of it.

=========  ==========================================  =============================
tag        header (after the tag byte)                 payload
=========  ==========================================  =============================
CALL       ``qid`` u64, ``parent`` u64, ``target``     ``(name, args, kwargs)``
           u64, ``op`` u8
RETURN     ``qid`` u64                                 the value
RAISE      ``qid`` u64                                 exception data (``_errors_data``)
RELEASE    -                                           ``((export_id, count), ...)``;
                                                       ``(0, key)``: forget a key
HELLO      ``version`` u32                             the sandbox's start-up report
=========  ==========================================  =============================

``qid`` numbers the sender's question; ``parent`` is the receiver's question this
call is nested in (0 when none), so the receiver can serve it on the thread waiting
for that answer; ``target`` is one of the receiver's exports (0 is the sandbox
runtime); ``op`` says what to do with it (see :class:`Op`). RELEASE says the sender
dropped that many references to each of the receiver's exports, and with a pair
``(0, key)`` that the sender no longer exports anything of interface ``key`` (the
receiver drops its proxy class for it; a later reference comes with a new key).
Decoded messages are tuples: ``(tag, qid, parent, target, op, name, args,
kwargs)``, ``(tag, qid, value)``, ``(tag, qid, error)``, ``(tag, pairs)`` and
``(tag, version, report)``.
"""

from __future__ import annotations

import enum
import struct
TYPE_CHECKING = False
if TYPE_CHECKING:  # (typing is not imported at run time: it costs start-up)
    from typing import Any

from ._errors import ProtocolError, safe_repr

__all__ = [
    "Tag",
    "Op",
    "FrameReader",
    "frame",
    "NEED_DATA",
    "check_message",
    "PROTOCOL_VERSION",
    "HEADER",
    "CALL_HEADER",
    "ANSWER_HEADER",
    "HELLO_HEADER",
    "CALL_FRAME",
    "ANSWER_FRAME",
    "split",
]

PROTOCOL_VERSION = 2
HEADER = struct.Struct(">I")
#: Body headers: tag, then the ids (see the module docstring).
CALL_HEADER = struct.Struct(">BQQQB")
ANSWER_HEADER = struct.Struct(">BQ")
HELLO_HEADER = struct.Struct(">BI")
#: A frame's length prefix and a body header in one (what the small-call path writes).
CALL_FRAME = struct.Struct(">IBQQQB")
ANSWER_FRAME = struct.Struct(">IBQ")
_HEADER_SIZE = HEADER.size
_pack_header = HEADER.pack


class Tag(enum.IntEnum):
    CALL = 1
    RETURN = 2
    RAISE = 3
    RELEASE = 4
    HELLO = 5


class Op(enum.IntEnum):
    """What a CALL asks of its target."""

    CALL = 0  #: call member ``name`` (or the target itself when ``name`` is None)
    GET = 1  #: read property ``name``
    SET = 2  #: set property ``name`` to ``args[0]``
    ITER = 3  #: start iterating: returns ``(first_batch, iterator_or_None)``
    NEXT = 4  #: next batch of an iterator: returns ``(batch, more)``


class _NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Any = _NeedData()


def frame(body: bytes) -> bytes:
    """Prefix ``body`` with its length."""
    return _pack_header(len(body)) + body


class FrameReader:
    """Cuts a byte stream into frame bodies, refusing frames over ``max_frame``.

    After any error it stays broken: every later call raises the same error.
    """

    __slots__ = ("max_frame", "_buf", "_pos", "_error", "idle")

    def __init__(self, max_frame: int) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._pos = 0
        self._error: ProtocolError | None = None
        #: True when no byte is buffered (a reader may take the next frame itself).
        self.idle = True

    def feed(self, data: bytes) -> None:
        """Add bytes read from the peer."""
        if self._error is not None:
            raise self._error
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data
        self.idle = not self._buf

    def next_frame(self) -> bytes:
        """The next complete body, or ``NEED_DATA``."""
        if self._error is not None:
            raise self._error
        buf = self._buf
        pos = self._pos
        avail = len(buf) - pos
        if avail < _HEADER_SIZE:
            return NEED_DATA
        (size,) = HEADER.unpack_from(buf, pos)
        if size > self.max_frame:
            self._error = ProtocolError(
                f"frame of {size} bytes exceeds the limit of {self.max_frame} bytes "
                "(Limits.max_message_mb)"
            )
            raise self._error
        if avail < _HEADER_SIZE + size:
            return NEED_DATA
        start = pos + _HEADER_SIZE
        body = bytes(buf[start : start + size])
        self._pos = start + size
        self.idle = self._pos == len(buf)
        return body

    def wanted(self) -> int:
        """How many more bytes the frame being read needs (at least 1)."""
        avail = len(self._buf) - self._pos
        if avail < _HEADER_SIZE:
            return _HEADER_SIZE - avail
        (size,) = HEADER.unpack_from(self._buf, self._pos)
        return max(1, _HEADER_SIZE + size - avail)

    def buffered(self) -> int:
        return len(self._buf) - self._pos


# --------------------------------------------------------------------------- validation

MAX_NAME = 256
MAX_ID = 1 << 62


def _bad(what: str) -> ProtocolError:
    return ProtocolError(f"malformed message: {what}")


def _check_id(value: Any, field: str, *, zero_ok: bool = False) -> None:
    if type(value) is not int or not ((0 if zero_ok else 1) <= value < MAX_ID):
        raise _bad(f"{field} must be a positive int, got {type(value).__name__} {safe_repr(value)}")


_CALL, _RETURN, _RAISE, _RELEASE, _HELLO = (int(t) for t in (Tag.CALL, Tag.RETURN, Tag.RAISE, Tag.RELEASE, Tag.HELLO))
_OPS = frozenset(int(o) for o in Op)
_unpack_call = CALL_HEADER.unpack_from
_unpack_answer = ANSWER_HEADER.unpack_from


def split(body: Any) -> tuple[tuple, int]:
    """Read the header of a body from an untrusted peer.

    Returns the header fields as a tuple starting with the tag, and the offset of the
    payload. Raises :class:`ProtocolError` naming the field that is wrong.
    """
    n = len(body)
    if not n:
        raise _bad("empty body")
    tag = body[0]
    if tag == _RETURN or tag == _RAISE:
        if n < 9:
            raise _bad(f"{Tag(tag).name} header cut short ({n} bytes)")
        head = _unpack_answer(body)
        if not 0 < head[1] < MAX_ID:
            _check_id(head[1], f"{Tag(tag).name} qid")
        return head, 9
    if tag == _CALL:
        if n < 26:
            raise _bad(f"CALL header cut short ({n} bytes)")
        head = _unpack_call(body)
        _, qid, parent, target, op = head
        if not 0 < qid < MAX_ID:
            _check_id(qid, "CALL qid")
        if parent >= MAX_ID:
            _check_id(parent, "CALL parent", zero_ok=True)
        if target >= MAX_ID:
            _check_id(target, "CALL target", zero_ok=True)
        if op not in _OPS:
            raise _bad(f"CALL op {op} is unknown")
        return head, 26
    if tag == _RELEASE:
        return (tag,), 1
    if tag == _HELLO:
        if n < 5:
            raise _bad(f"HELLO header cut short ({n} bytes)")
        return HELLO_HEADER.unpack_from(body), 5
    raise _bad(f"unknown message tag {tag}")


def check_call_payload(payload: Any) -> tuple:
    """Check the ``(name, args, kwargs)`` payload of a CALL; returns it."""
    if type(payload) is not tuple or len(payload) != 3:
        raise _bad(f"CALL payload must be (name, args, kwargs), got {type(payload).__name__}")
    name, args, kwargs = payload
    if name is not None and (type(name) is not str or len(name) > MAX_NAME):
        raise _bad("CALL name must be None or a short str")
    if type(args) is not tuple:
        raise _bad(f"CALL args must be a tuple, got {type(args).__name__}")
    if type(kwargs) is not dict:
        raise _bad(f"CALL kwargs must be a dict with str keys, got {type(kwargs).__name__}")
    if kwargs:
        for k in kwargs:
            if type(k) is not str:
                raise _bad("CALL kwargs must be a dict with str keys")
    return payload


def check_release(pairs: Any) -> tuple:
    """Check the payload of a RELEASE; returns it."""
    if type(pairs) is not tuple:
        raise _bad("RELEASE must carry a tuple of (id, count) pairs")
    for pair in pairs:
        if type(pair) is not tuple or len(pair) != 2:
            raise _bad("RELEASE pair must be (id, count)")
        _check_id(pair[0], "RELEASE id", zero_ok=True)  # (0, key): forget interface key
        _check_id(pair[1], "RELEASE count")
    return pairs


def check_message(msg: Any) -> tuple:
    """Check the shape of a decoded message tuple (see the module docstring)."""
    if type(msg) is not tuple or not msg:
        raise _bad(f"expected a tuple, got {type(msg).__name__}")
    tag = msg[0]
    if type(tag) is not int:
        raise _bad(f"unknown message tag {safe_repr(tag)}")
    if tag == _RETURN or tag == _RAISE:
        if len(msg) != 3:
            raise _bad(f"{Tag(tag).name} has {len(msg)} fields, expected 3")
        _check_id(msg[1], f"{Tag(tag).name} qid")
        return msg
    if tag == _CALL:
        if len(msg) != 8:
            raise _bad(f"CALL has {len(msg)} fields, expected 8")
        _, qid, parent, target, op, name, args, kwargs = msg
        _check_id(qid, "CALL qid")
        _check_id(parent, "CALL parent", zero_ok=True)
        _check_id(target, "CALL target", zero_ok=True)
        if type(op) is not int or op not in _OPS:
            raise _bad(f"CALL op {safe_repr(op)} is unknown")
        check_call_payload((name, args, kwargs))
        return msg
    if tag == _RELEASE:
        if len(msg) != 2:
            raise _bad("RELEASE must carry a tuple of (id, count) pairs")
        check_release(msg[1])
        return msg
    if tag == _HELLO:
        if len(msg) != 3 or type(msg[1]) is not int:
            raise _bad("HELLO must be (tag, version, report)")
        return msg
    raise _bad(f"unknown message tag {safe_repr(tag)}")
