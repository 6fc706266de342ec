"""The wire protocol, without I/O: frames in, messages out.

A frame is a 4-byte big-endian body length followed by the body. The length is
checked against the frame limit before a byte of the body is kept. A body is a
pickled tuple whose first item is a message tag (see :class:`Tag`).

Messages (every id is an ``int``):

=========  =====================================================================
tag        fields
=========  =====================================================================
CALL       ``qid, parent, target, op, name, args, kwargs`` - run ``op`` on the
           receiver's export ``target``; ``parent`` is the sender's answer that
           this call is nested in (0 when none), so the receiver can serve the
           reply on the thread waiting for it
RETURN     ``qid, value``
RAISE      ``qid, error`` - ``error`` is exception data, see ``_errordata``
RELEASE    ``pairs`` - ``((export_id, count), ...)``: the sender dropped that
           many references to each of the receiver's exports
HELLO      ``version, report`` - first frame of a sandbox: ready, or why not
=========  =====================================================================
"""

from __future__ import annotations

import enum
import struct
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
]

PROTOCOL_VERSION = 1
HEADER = struct.Struct(">I")
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

    __slots__ = ("max_frame", "_buf", "_pos", "_error")

    def __init__(self, max_frame: int) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._pos = 0
        self._error: ProtocolError | None = None

    def feed(self, data: bytes) -> None:
        """Add bytes read from the peer."""
        if self._error is not None:
            raise self._error
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

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
_MAX_ID = 1 << 62


def _bad(what: str) -> ProtocolError:
    return ProtocolError(f"malformed message: {what}")


def _check_id(value: Any, field: str, *, zero_ok: bool = False) -> None:
    if type(value) is not int or not ((0 if zero_ok else 1) <= value < _MAX_ID):
        raise _bad(f"{field} must be a positive int, got {type(value).__name__} {safe_repr(value)}")


def check_message(msg: Any) -> tuple:
    """Check the shape of a decoded message from an untrusted peer.

    Returns ``msg``; raises :class:`ProtocolError` naming the field that is wrong.
    """
    if type(msg) is not tuple or not msg:
        raise _bad(f"expected a tuple, got {type(msg).__name__}")
    tag = msg[0]
    if type(tag) is not int:
        raise _bad(f"unknown message tag {safe_repr(tag)}")
    if tag == _RETURN:  # the most frequent message: checked first, inline
        if len(msg) != 3:
            raise _bad(f"RETURN has {len(msg)} fields, expected 3")
        qid = msg[1]
        if type(qid) is not int or not 0 < qid < _MAX_ID:
            _check_id(qid, "RETURN qid")
        return msg
    if tag == _CALL:
        if len(msg) != 8:
            raise _bad(f"CALL has {len(msg)} fields, expected 8")
        _, qid, parent, target, op, name, args, kwargs = msg
        if type(qid) is not int or not 0 < qid < _MAX_ID:
            _check_id(qid, "CALL qid")
        if type(parent) is not int or not 0 <= parent < _MAX_ID:
            _check_id(parent, "CALL parent", zero_ok=True)
        if type(target) is not int or not 0 <= target < _MAX_ID:
            _check_id(target, "CALL target", zero_ok=True)
        if type(op) is not int or op not in _OPS:
            raise _bad(f"CALL op {safe_repr(op)} is unknown")
        if name is not None and (type(name) is not str or len(name) > MAX_NAME):
            raise _bad("CALL name must be None or a short str")
        if type(args) is not tuple:
            raise _bad(f"CALL args must be a tuple, got {type(args).__name__}")
        if type(kwargs) is not dict:
            raise _bad("CALL kwargs must be a dict with str keys")
        if kwargs:
            for k in kwargs:
                if type(k) is not str:
                    raise _bad("CALL kwargs must be a dict with str keys")
        return msg
    if tag == _RAISE:
        if len(msg) != 3:
            raise _bad(f"RAISE has {len(msg)} fields, expected 3")
        _check_id(msg[1], "RAISE qid")
        return msg
    if tag == _RELEASE:
        if len(msg) != 2 or type(msg[1]) is not tuple:
            raise _bad("RELEASE must carry a tuple of (id, count) pairs")
        for pair in msg[1]:
            if type(pair) is not tuple or len(pair) != 2:
                raise _bad("RELEASE pair must be (id, count)")
            _check_id(pair[0], "RELEASE id")
            _check_id(pair[1], "RELEASE count")
        return msg
    if tag == _HELLO:
        if len(msg) != 3 or type(msg[1]) is not int:
            raise _bad("HELLO must be (tag, version, report)")
        return msg
    raise _bad(f"unknown message tag {safe_repr(tag)}")


_OPS = frozenset(int(o) for o in Op)
_CALL, _RETURN, _RAISE, _RELEASE, _HELLO = (int(t) for t in (Tag.CALL, Tag.RETURN, Tag.RAISE, Tag.RELEASE, Tag.HELLO))
