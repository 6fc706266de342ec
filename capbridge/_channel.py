"""The thin I/O layer: moves a :class:`Session`'s bodies over two blocking fds.

There is no reader thread. A thread that waits for an answer reads the channel
itself, so a call costs one write and one read. Calls nest both ways: while waiting,
a thread serves the calls the peer makes on its behalf (the peer names the call it
is nested in as ``parent``), so host -> sandbox -> host -> ... runs on one thread,
to any depth. When several threads wait at once, one reads and hands each message
to the thread it belongs to; calls nested in none of our questions go to a shared
queue that any waiting thread serves.

The common case (one thread, small frames, scalar arguments) is written out inline:
a round trip is one ``write`` and one ``readv`` per side and a handful of Python
calls.
"""

from __future__ import annotations

import copy
import os
import threading
import time
from typing import Any, Callable

from . import _watchdog
from ._errors import CapbridgeError, ProtocolError, SandboxError
from ._protocol import HEADER, NEED_DATA, FrameReader, Tag
from ._session import Session

__all__ = ["Channel", "ChannelClosed"]

_CALL_T, _RETURN_T, _RAISE_T, _RELEASE_T = int(Tag.CALL), int(Tag.RETURN), int(Tag.RAISE), int(Tag.RELEASE)
_READ_SIZE = 64 * 1024
_SMALL = 65536
_pack = HEADER.pack
_unpack_from = HEADER.unpack_from
_SCALARS = frozenset({type(None), bool, int, float, str, bytes})
_monotonic = time.monotonic
_get_ident = threading.get_ident
_os_write = os.write
_os_readv = os.readv


class ChannelClosed(SandboxError):
    """The channel was closed by this side."""


class _Waiter:
    __slots__ = ("inbox", "qid")

    def __init__(self, qid: int) -> None:
        self.inbox: list = []
        self.qid = qid


class _Local(threading.local):
    depth = 0
    serving: list | None = None


class Channel:
    """Blocking transport for one session over ``rfd`` (peer -> us) and ``wfd``.

    ``wall`` (seconds or None) bounds every outermost call a thread makes; when it
    runs out the watchdog calls ``on_deadline`` (the host kills the sandbox).
    """

    def __init__(
        self,
        session: Session,
        rfd: int,
        wfd: int,
        *,
        on_fatal: Callable[[BaseException], BaseException] | None = None,
        raise_error: Callable[[tuple], BaseException] | None = None,
        wall: float | None = None,
        on_deadline: Callable[[], None] | None = None,
    ) -> None:
        self.session = session
        session.channel = self
        self.rfd = rfd
        self.wfd = wfd
        self._reader = FrameReader(session.max_frame)
        self._max_frame = session.max_frame
        rbuf = bytearray(_READ_SIZE)
        self._rbuf = rbuf
        self._rbufs = [rbuf]
        self._send_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._cond = threading.Condition(threading.Lock())
        self._nwaiting = 0
        self._local = _Local()
        self._dead: BaseException | None = None
        self._top: list = []
        self._on_fatal = on_fatal
        self._raise_error = raise_error or _default_error
        self._pending = session.tables.imports.pending_releases
        self._questions = session.tables.questions
        self._next_qid = session.tables.next_qid
        self._trusted = session.trusted_peer
        self.calls_out = 0
        self.wall = wall
        self.on_deadline = on_deadline
        #: Thread ident -> deadline of that thread's outermost call.
        self.deadlines: dict[int, float] = {}
        if wall is not None:
            _watchdog.watch(self)

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
                # A dead channel keeps nothing alive: not what the peer could
                # reach, not its owner (through the callbacks).
                self.session.connection_lost()
                self._on_fatal = self.on_deadline = None
                self._raise_error = _default_error
        with self._cond:
            self._cond.notify_all()
        return self._dead  # type: ignore[return-value]

    def close(self) -> None:
        self.fail(ChannelClosed("the sandbox was closed"))
        _watchdog.unwatch(self)

    # ------------------------------------------------------------------ sending

    def _write(self, data: Any) -> None:
        view = memoryview(data)
        while view:
            try:
                n = _os_write(self.wfd, view)
            except InterruptedError:
                continue
            view = view[n:]

    def _write_frame(self, body: Any) -> None:
        """Write one frame, after any queued releases. Caller holds the send lock."""
        try:
            if self._pending:
                session = self.session
                rel = session.release_body(session.take_releases())
                prefix = _pack(len(rel)) + rel
            else:
                prefix = b""
            if len(body) < _SMALL:
                data = prefix + _pack(len(body)) + body
                n = _os_write(self.wfd, data)
                if n != len(data):
                    self._write(memoryview(data)[n:])
            else:
                self._write(prefix + _pack(len(body)))
                self._write(body)
        except OSError as exc:
            raise self.fail(exc) from None

    def _send(self, msg: tuple, plain: bool) -> None:
        """Encode and send ``msg``; ``plain`` when it holds only scalars.

        Messages that may carry references are encoded under the send lock, so
        interface descriptors reach the peer in the order their ids were given.
        """
        session = self.session
        lock = self._send_lock
        if plain and not self._pending:
            # The common case: one small frame, one write.
            body = session.encode_plain(msg)
            lock.acquire()
            try:
                if len(body) < _SMALL:
                    data = _pack(len(body)) + body
                    n = _os_write(self.wfd, data)
                    if n != len(data):  # pragma: no cover - a signal cut the write short
                        self._write(memoryview(data)[n:])
                else:
                    self._write_frame(body)
            except OSError as exc:
                raise self.fail(exc) from None
            finally:
                lock.release()
        else:
            with lock:
                self._write_frame(session.encode_plain(msg) if plain else session.encode(msg))

    def flush_releases(self) -> None:
        """Send queued releases now (they normally ride along with the next message)."""
        if self._dead is not None or not self._pending:
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

    def call(self, target: int, op: int, name: str | None, args: tuple, kwargs: dict) -> Any:
        """Send a call and wait for its answer, serving nested calls meanwhile."""
        if self._dead is not None:
            raise _detached(self._dead)
        local = self._local
        wall = self.wall
        ident = 0
        depth = 0
        if wall is not None:
            # Nesting depth only matters for the deadline of the outermost call.
            depth = local.depth
            if not depth:
                ident = _get_ident()
                deadline = _monotonic() + wall
                self.deadlines[ident] = deadline
                if deadline < _watchdog.next_wake:
                    _watchdog.poke()
            local.depth = depth + 1
        qid = self._next_qid()
        waiter = _Waiter(qid)
        questions = self._questions
        questions[qid] = waiter
        try:
            stack = local.serving
            msg = (_CALL_T, qid, stack[-1] if stack else 0, target, op, name, args, kwargs)
            scalar = not kwargs
            if scalar:
                for a in args:
                    if type(a) not in _SCALARS:
                        scalar = False
                        break
            self._send(msg, scalar)
            self.calls_out += 1
            reply = self._wait(waiter)
        except OSError as exc:
            raise _detached(self.fail(exc)) from None
        except BaseException as exc:
            if exc is self._dead:
                raise _detached(exc) from None
            raise
        finally:
            del questions[qid]
            if wall is not None:
                local.depth = depth
                if ident:
                    self.deadlines.pop(ident, None)
        if reply[0] == _RETURN_T:
            return reply[2]
        try:
            err = self._raise_error(reply[2])
        except ProtocolError as exc:  # malformed error data ends the connection
            raise _detached(self.fail(exc)) from None
        raise _detached(err) if err is self._dead else err

    def serve_forever(self) -> None:
        """Serve the peer's calls until the channel ends (the sandbox's main loop)."""
        self._wait(_Waiter(0))

    def _wait(self, waiter: _Waiter) -> tuple:
        inbox = waiter.inbox
        top = self._top
        read_lock = self._read_lock
        qid = waiter.qid
        while True:
            while inbox:
                msg = inbox.pop(0)
                if msg[0] == _CALL_T:
                    self._serve(msg)
                else:
                    return msg
            if top:
                try:
                    msg = top.pop(0)
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
                if len(msgs) == 1 and not self._nwaiting:
                    msg = msgs[0]
                    tag = msg[0]
                    if tag == _RETURN_T or tag == _RAISE_T:
                        if msg[1] == qid:
                            return msg
                    elif tag == _CALL_T and (not msg[2] or msg[2] == qid):
                        self._serve(msg)  # top-level, or nested in the call we wait for
                        continue
                for msg in msgs:
                    self._route(msg, waiter)
                if self._nwaiting:
                    with self._cond:
                        self._cond.notify_all()
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
            target = self._questions.get(msg[2]) if msg[2] else None
            if target is None:
                self._top.append(msg)
            else:
                target.inbox.append(msg)
            if target is not me and self._nwaiting:
                with self._cond:
                    self._cond.notify_all()
            return
        if tag == _RETURN_T or tag == _RAISE_T:
            w = self._questions.get(msg[1])
            if w is None:
                if self._trusted:
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
        saved = None if self._trusted else session.begin_answer()
        try:
            try:
                result = session.dispatch(msg)
            except ProtocolError as exc:
                raise self.fail(exc) from None
            except BaseException as exc:
                if self._dead is not None:
                    raise self._dead
                self._reply_error(qid, exc)
                return
            try:
                self._send((_RETURN_T, qid, result), type(result) in _SCALARS)
            except CapbridgeError as exc:
                if self._dead is not None:
                    raise
                self._reply_error(qid, exc)
        finally:
            if saved is not None:
                session.end_answer(saved)
            stack.pop()
            del answers[qid]

    def _reply_error(self, qid: int, exc: BaseException) -> None:
        if isinstance(exc, (KeyboardInterrupt, SystemExit)) and not self._trusted:
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
                n = _os_readv(self.rfd, self._rbufs)
            except InterruptedError:
                n = -1
            if n == 0:
                raise EOFError("the peer closed the channel")
            if n > 0:
                rbuf = self._rbuf
                if n >= 4:
                    size = _unpack_from(rbuf)[0]
                    if size + 4 == n and size <= self._max_frame:
                        return [decode(rbuf[4:n])]
                    if size + 4 > n and size <= self._max_frame:
                        # One large frame: read the rest straight into a buffer of
                        # its (already checked) size instead of growing one.
                        return [decode(self._read_large(size, rbuf[4:n]))]
                reader.feed(rbuf[:n])
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
                    data = os.read(self.rfd, min(want, 1 << 24))
                else:
                    n = _os_readv(self.rfd, self._rbufs)
                    data = self._rbuf[:n]
            except InterruptedError:
                continue
            if not data:
                raise EOFError("the peer closed the channel")
            reader.feed(data)

    def _read_large(self, size: int, head: Any) -> bytearray:
        body = bytearray(size)
        got = len(head)
        body[:got] = head
        view = memoryview(body)
        rfd = self.rfd
        while got < size:
            try:
                n = _os_readv(rfd, [view[got:]])
            except InterruptedError:
                continue
            if n == 0:
                raise EOFError("the peer closed the channel")
            got += n
        return body

    def read_one(self) -> bytes:
        """Read and return the next body without routing it (for handshakes)."""
        with self._read_lock:
            body = self._reader.next_frame()
            while body is NEED_DATA:
                data = os.read(self.rfd, _READ_SIZE)
                if not data:
                    raise EOFError("the peer closed the channel")
                self._reader.feed(data)
                body = self._reader.next_frame()
            return body


def _as_error(exc: BaseException) -> BaseException:
    if isinstance(exc, (ProtocolError, EOFError, OSError, SandboxError)):
        return exc
    if isinstance(exc, RecursionError):
        return ProtocolError("message nested too deeply")
    if isinstance(exc, MemoryError):
        return ProtocolError("message too large to decode")
    return exc


def _detached(exc: BaseException) -> BaseException:
    """What to raise for the channel's stored error: a copy, so the stored one never
    collects the frames it passes through (they would keep the caller's objects,
    the Sandbox among them, alive until the cyclic GC runs)."""
    link: BaseException | None = exc
    for _ in range(8):  # its causes' frames, too: each links to the frames below it
        if link is None:
            break
        link.__traceback__ = None
        link = link.__cause__ or link.__context__
    try:
        new = copy.copy(exc)
    except Exception:  # pragma: no cover - an error type that cannot be copied
        return exc
    new.__cause__ = exc.__cause__
    return new


def _default_error(data: tuple) -> BaseException:
    from ._errors_data import error_from_data

    return error_from_data(data, trusted=False)
