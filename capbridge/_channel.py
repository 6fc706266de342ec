"""The thin I/O layer: moves a :class:`Session`'s bodies over two blocking fds.

There is no reader thread. A thread that waits for an answer reads the channel
itself, so a call costs one write and one read. Calls nest both ways: while waiting,
a thread serves the calls the peer makes on its behalf (the peer names the call it
is nested in as ``parent``), so host -> sandbox -> host -> ... runs on one thread,
to any depth. When several threads wait at once, one reads and hands each message
to the thread it belongs to.
"""

from __future__ import annotations

import collections
import errno
import os
import threading
from typing import Any, Callable

from ._errors import CapbridgeError, ProtocolError, SandboxError
from ._protocol import NEED_DATA, FrameReader, HEADER, Tag
from ._session import Session

__all__ = ["Channel", "ChannelClosed"]

_CALL_T, _RETURN_T, _RAISE_T, _RELEASE_T = int(Tag.CALL), int(Tag.RETURN), int(Tag.RAISE), int(Tag.RELEASE)
_READ_SIZE = 64 * 1024
_pack = HEADER.pack


class ChannelClosed(SandboxError):
    """The channel was closed by this side."""


class _Waiter:
    __slots__ = ("inbox", "qid")

    def __init__(self, qid: int) -> None:
        self.inbox: collections.deque = collections.deque()
        self.qid = qid


class _Local(threading.local):
    depth = 0
    serving: list | None = None


class Channel:
    """Blocking transport for one session over ``rfd`` (peer -> us) and ``wfd``."""

    def __init__(
        self,
        session: Session,
        rfd: int,
        wfd: int,
        *,
        on_fatal: Callable[[BaseException], BaseException] | None = None,
        raise_error: Callable[[tuple], BaseException] | None = None,
    ) -> None:
        self.session = session
        session.channel = self
        self.rfd = rfd
        self.wfd = wfd
        self._reader = FrameReader(session.max_frame)
        rbuf = bytearray(_READ_SIZE)
        self._rbufs = [rbuf]
        self._rview = memoryview(rbuf)
        self._send_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._cond = threading.Condition(threading.Lock())
        self._nwaiting = 0
        self._local = _Local()
        self._dead: BaseException | None = None
        #: Calls not nested in one of our questions: any waiting thread serves them.
        self._top: collections.deque = collections.deque()
        self._on_fatal = on_fatal
        self._raise_error = raise_error or _default_error
        self.calls_out = 0
        #: Called with each CALL before it is served (the host counts/limits here).
        self.before_serve: Callable[[tuple], None] | None = None
        #: (arm, disarm) called around each outermost call of a thread (deadlines).
        self.outer_hooks: tuple[Callable[[], Any], Callable[[Any], None]] | None = None

    # ------------------------------------------------------------------ state

    @property
    def dead(self) -> BaseException | None:
        return self._dead

    def fail(self, exc: BaseException) -> BaseException:
        """Mark the channel dead with ``exc`` (first cause wins) and wake everyone."""
        if self._dead is None:
            final = exc
            if self._on_fatal is not None:
                try:
                    final = self._on_fatal(exc)
                except BaseException as hook_exc:  # pragma: no cover - defensive
                    final = hook_exc
            if self._dead is None:
                self._dead = final
        with self._cond:
            self._cond.notify_all()
        return self._dead

    def close(self) -> None:
        self.fail(ChannelClosed("the sandbox was closed"))

    # ------------------------------------------------------------------ sending

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.wfd, view)
            except InterruptedError:
                continue
            view = view[n:]

    def _write_frame(self, body: bytes) -> None:
        """Write one frame, after any queued releases. Caller holds the send lock."""
        session = self.session
        if session.tables.imports.pending_releases:
            rel = session.release_body(session.take_releases())
            prefix = _pack(len(rel)) + rel
        else:
            prefix = b""
        try:
            if len(body) < 65536:
                data = prefix + _pack(len(body)) + body
                n = os.write(self.wfd, data)
                if n != len(data):
                    self._write(memoryview(data)[n:])
            else:
                self._write(prefix + _pack(len(body)))
                self._write(body)
        except OSError as exc:
            raise self.fail(exc) from None

    def _send_msg(self, msg: tuple, scalar: bool) -> None:
        """Encode and send ``msg``.

        Messages that may carry references are encoded under the send lock, so
        interface descriptors reach the peer in the order their ids were given.
        """
        if self._dead is not None:
            raise self._dead
        session = self.session
        if scalar:
            body = session.scalar_return_body(msg) if msg[0] == _RETURN_T else session.encode(msg, fast=True)
            with self._send_lock:
                self._write_frame(body)
        else:
            with self._send_lock:
                self._write_frame(session.encode(msg))

    def flush_releases(self) -> None:
        """Send queued releases now (they normally ride along with the next message)."""
        if self._dead is not None or not self.session.tables.imports.pending_releases:
            return
        with self._send_lock:
            releases = self.session.take_releases()
            if releases:
                rel = self.session.release_body(releases)
                try:
                    self._write(_pack(len(rel)) + rel)
                except OSError as exc:
                    self.fail(exc)

    # ------------------------------------------------------------------ calling

    def current_parent(self) -> int:
        stack = getattr(self._local, "serving", None)
        return stack[-1] if stack else 0

    def call(self, target: int, op: int, name: str | None, args: tuple, kwargs: dict) -> Any:
        """Send a call and wait for its answer, serving nested calls meanwhile."""
        if self._dead is not None:
            raise self._dead
        session = self.session
        questions = session.tables.questions
        local = self._local
        depth = local.depth
        hooks = self.outer_hooks
        token = hooks[0]() if hooks is not None and not depth else None
        local.depth = depth + 1
        qid = session.tables.next_qid()
        waiter = _Waiter(qid)
        questions[qid] = waiter
        try:
            stack = local.serving
            parent = stack[-1] if stack else 0
            self._send_msg(*session.call_msg(qid, parent, target, op, name, args, kwargs))
            self.calls_out += 1
            msg = self._wait(waiter)
        finally:
            del questions[qid]
            local.depth = depth
            if token is not None:
                hooks[1](token)  # type: ignore[index]
        if msg[0] == _RETURN_T:
            return msg[2]
        raise self._raise_error(msg[2])

    def serve_forever(self) -> None:
        """Serve the peer's calls until the channel ends (the sandbox's main loop)."""
        self._wait(_Waiter(0))

    def _wait(self, waiter: _Waiter) -> tuple:
        inbox = waiter.inbox
        top = self._top
        read_lock = self._read_lock
        while True:
            while inbox:
                msg = inbox.popleft()
                if msg[0] == _CALL_T:
                    self._serve(msg)
                else:
                    return msg
            if top:
                try:
                    msg = top.popleft()
                except IndexError:
                    pass
                else:
                    self._serve(msg)
                    continue
            if self._dead is not None:
                raise self._dead
            if read_lock.acquire(False):
                try:
                    msgs = self._read_messages()
                except BaseException as exc:
                    read_lock.release()
                    raise self.fail(_as_error(exc)) from None
                read_lock.release()
                if self._nwaiting:
                    for msg in msgs:
                        self._route(msg, waiter)
                    with self._cond:
                        self._cond.notify_all()
                    continue
                if len(msgs) == 1:
                    msg = msgs[0]
                    tag = msg[0]
                    if (tag == _RETURN_T or tag == _RAISE_T) and msg[1] == waiter.qid:
                        return msg
                for msg in msgs:
                    self._route(msg, waiter)
            else:
                with self._cond:
                    self._nwaiting += 1
                    try:
                        while not inbox and not top and read_lock.locked() and self._dead is None:
                            self._cond.wait(0.5)
                    finally:
                        self._nwaiting -= 1

    def _route(self, msg: tuple, me: _Waiter) -> None:
        tag = msg[0]
        if tag == _CALL_T:
            target = self.session.tables.questions.get(msg[2]) if msg[2] else None
            if target is None:
                self._top.append(msg)
            else:
                target.inbox.append(msg)
            if target is not me and self._nwaiting:
                with self._cond:
                    self._cond.notify_all()
            return
        if tag == _RETURN_T or tag == _RAISE_T:
            w = self.session.tables.questions.get(msg[1])
            if w is None:
                if self.session.trusted_peer:
                    return
                raise self.fail(ProtocolError(f"answer to unknown question {msg[1]}"))
            w.inbox.append(msg)
            if w is not me and self._nwaiting:
                with self._cond:
                    self._cond.notify_all()
            return
        if tag == _RELEASE_T:
            try:
                self.session.handle_release(msg[1])
            except ProtocolError as exc:
                raise self.fail(exc) from None
            return
        raise self.fail(ProtocolError(f"unexpected message tag {tag!r:.20}"))

    def _serve(self, msg: tuple) -> None:
        session = self.session
        qid = msg[1]
        local = self._local
        stack = local.serving
        if stack is None:
            stack = local.serving = []
        stack.append(qid)
        answers = session.tables.answers
        answers[qid] = True
        saved = session.begin_answer()
        try:
            if self.before_serve is not None:
                self.before_serve(msg)
            try:
                result = session.dispatch(msg)
            except ProtocolError as exc:
                raise self.fail(exc) from None
            except BaseException as exc:
                if self._dead is not None and exc is self._dead:
                    raise
                self._reply_error(qid, exc)
                return
            try:
                self._send_msg(*session.return_msg(qid, result))
            except CapbridgeError as exc:
                if self._dead is not None:
                    raise
                self._reply_error(qid, exc)
        finally:
            session.end_answer(saved)
            stack.pop()
            del answers[qid]

    def _reply_error(self, qid: int, exc: BaseException) -> None:
        if isinstance(exc, (KeyboardInterrupt, SystemExit)) and not self.session.trusted_peer:
            raise exc
        body = self.session.raise_body(qid, exc)
        with self._send_lock:
            self._write_frame(body)

    # ------------------------------------------------------------------ reading

    def _read_messages(self) -> list[tuple]:
        reader = self._reader
        decode = self.session.decode
        if not reader.buffered():
            # Fast path: one read brings exactly one whole frame.
            try:
                n = os.readv(self.rfd, self._rbufs)
            except InterruptedError:
                n = -1
            if n == 0:
                raise EOFError("the peer closed the channel")
            if n > 0:
                view = self._rview
                if n >= 4:
                    size = int.from_bytes(view[:4], "big")
                    if size + 4 == n and size <= reader.max_frame:
                        return [decode(bytes(view[4:n]))]
                reader.feed(view[:n])
        msgs: list[tuple] = []
        while True:
            body = reader.next_frame()
            if body is not NEED_DATA:
                msgs.append(decode(body))
                continue
            if msgs:
                return msgs
            want = reader.wanted()
            try:
                if want > _READ_SIZE:
                    data = os.read(self.rfd, want)
                else:
                    n = os.readv(self.rfd, self._rbufs)
                    data = self._rview[:n]
            except InterruptedError:
                continue
            if not data:
                raise EOFError("the peer closed the channel")
            reader.feed(data)

    def read_one(self) -> tuple:
        """Read and return the next message without routing it (for handshakes)."""
        with self._read_lock:
            body = self._reader.next_frame()
            while body is NEED_DATA:
                data = os.read(self.rfd, _READ_SIZE)
                if not data:
                    raise EOFError("the peer closed the channel")
                self._reader.feed(data)
                body = self._reader.next_frame()
            return body  # type: ignore[return-value]


def _as_error(exc: BaseException) -> BaseException:
    if isinstance(exc, (ProtocolError, EOFError, OSError, SandboxError)):
        return exc
    if isinstance(exc, RecursionError):
        return ProtocolError("message nested too deeply")
    return exc


def _default_error(data: tuple) -> BaseException:
    from ._errors_data import error_from_data

    return error_from_data(data, trusted=False)
