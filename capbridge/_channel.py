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

Deadlines (host side): each outermost call records when the watchdog must look at
it in ``deadlines``; calls with a soft deadline or a CPU budget also get a
:class:`~capbridge._deadline.Timed` record in ``timed``. Interrupts (sandbox side):
the signal handler calls :meth:`Channel.interrupt`, which raises
:class:`CallTimeout` in user code at once, or - when the thread is inside the
channel, where an exception could lose half a frame - leaves it for the next safe
point: after a reply is taken, or after a batch of messages is routed.
"""

from __future__ import annotations

import array
import fcntl
import copy
import os
import select
import termios
import threading
import time
TYPE_CHECKING = False
if TYPE_CHECKING:  # (typing is not imported at run time: it costs start-up)
    from typing import Any, Callable

from . import _watchdog
from ._deadline import Timed
from ._errors import CallTimeout, CapbridgeError, ProtocolError, SandboxError
from ._interrupt import MASK as _TOKEN_MASK
from ._protocol import HEADER, NEED_DATA, FrameReader, Tag
from ._session import Session

__all__ = ["Channel", "ChannelClosed", "Pending"]

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
_os_read = os.read
_UNREAD: Any = object()
_NCPU = os.cpu_count() or 1


class ChannelClosed(SandboxError):
    """The channel was closed by this side."""




class _Local(threading.local):
    serving: list | None = None  # questions of the peer this thread is serving, innermost last
    block: Any = None  # the innermost active DeadlineBlock of this thread


class Pending:
    """A call :meth:`Channel.begin` sent, until :meth:`Channel.end` finishes it."""

    __slots__ = ("qid", "inbox", "stack", "armed", "reply", "served")

    def __init__(self, qid: int, stack: list) -> None:
        self.qid = qid
        self.inbox: list = []  # its answer and the calls nested in it, as routed
        self.stack = stack  # the serving stack of the thread that began it
        self.armed = 0
        self.reply: tuple | None = None
        self.served = 0  # calls nested in it served by step(), for the caller to see


#: Most questions a channel remembers having given up on (beyond, a late answer fails it).
MAX_GIVEN_UP = 1024


class Channel:
    """Blocking transport for one session over ``rfd`` (peer -> us) and ``wfd``.

    ``wall`` (seconds or None) bounds every outermost call a thread makes. When a
    call's time is up the watchdog calls ``on_deadline(qid)``; the host decides
    whether to interrupt or kill (see :mod:`capbridge._deadline`).
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
        # Questions this side gave up on (gather interrupted): their late answers are
        # dropped instead of counting as answers to unknown questions.
        self._given_up: set[int] = set()
        self._next_qid = session.tables.next_qid
        self._trusted = session.trusted_peer
        self.calls_out = 0
        self.wall = wall
        self.on_deadline = on_deadline
        #: Question id -> when the watchdog must look at that call.
        self.deadlines: dict[int, float] = {}
        #: Question id -> record of a call with a soft deadline or a CPU budget.
        self.timed: dict[int, Timed] = {}
        #: Per-call CPU budget in seconds, and how to read the peer's CPU time.
        self.cpu_budget: float | None = None
        self.cpu_clock: Callable[[], float] | None = None
        # Non-zero while calls need the slower deadline path (deadline blocks, a CPU budget).
        self._special = 0
        self._special_lock = threading.Lock()
        # Whether calls keep deadline bookkeeping at all (one check on the fast path).
        self._timing = wall is not None
        # For read_ready(): a poll object watching rfd, and that fd.
        self._ready: Any = None
        self._ready_fd = -1
        # Sandbox side: a call the main thread must stop at its next safe point.
        self._interrupt: int | None = None
        self._interrupt_ident = 0
        if on_deadline is not None:
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
                self._on_fatal = self.on_deadline = self.cpu_clock = None
                self._raise_error = _default_error
        with self._cond:
            self._cond.notify_all()
        return self._dead  # type: ignore[return-value]

    def close(self) -> None:
        self.fail(ChannelClosed("the sandbox was closed"))
        _watchdog.unwatch(self)

    def quiesce(self, timeout: float) -> bool:
        """After :meth:`close`: let go of the fds once no thread reads or writes them.

        Returns True when they may be closed (a thread still blocked in a read on a
        live peer would read from whatever file took the fd number next). From then
        on the channel uses fd -1, so a late caller fails with ``EBADF``.
        """
        end = _monotonic() + timeout
        if not self._read_lock.acquire(timeout=timeout):
            return False
        try:
            if not self._send_lock.acquire(timeout=max(0.0, end - _monotonic())):
                return False
            self.rfd = self.wfd = -1
            self._send_lock.release()
            return True
        finally:
            self._read_lock.release()

    def thread_state(self) -> _Local:
        """This thread's nesting state (deadline blocks keep theirs here)."""
        return self._local

    def add_special(self, n: int) -> None:
        with self._special_lock:
            self._special += n
            self._timing = self.wall is not None or self._special > 0

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
            lock.acquire()
            try:
                data = session.plain_frame(msg)
                n = _os_write(self.wfd, data)
                if n != len(data):  # a large frame, or a signal cut the write short
                    self._write(memoryview(data)[n:])
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

    def call(self, target: int, op: int, name: str | None, args: tuple, kwargs: dict,
             timeout: float | None = None) -> Any:
        """Send a call and wait for its answer, serving nested calls meanwhile.

        ``timeout`` (seconds) is a soft deadline for this call: it replaces the wall
        limit, and when it passes the call is interrupted (host side).
        """
        if self._dead is not None:
            raise _detached(self._dead)
        stack = self._local.serving
        if stack is None:
            stack = self._local.serving = []
        qid = self._next_qid()
        inbox: list = []  # what is routed to this call: its answer, calls nested in it
        questions = self._questions
        questions[qid] = inbox
        armed = 0
        timed = None
        # A call is outermost when this thread serves nothing of the peer's: only an
        # outermost call has a wall limit of its own (nested ones live inside one).
        if self._timing or timeout is not None:
            if timeout is not None or self._special:
                try:
                    armed = self._arm(qid, len(stack), timeout)
                except CallTimeout:  # a deadline block whose time is spent
                    del questions[qid]
                    raise
            elif not stack:
                # The common timed case: only the hard wall limit of an outermost call.
                deadline = _monotonic() + self.wall  # type: ignore[operator]
                self.deadlines[qid] = deadline
                armed = 1
                if deadline < _watchdog.next_wake:
                    _watchdog.poke()
        try:
            parent = stack[-1] if stack else 0
            scalar = not kwargs
            if scalar:
                for a in args:
                    if type(a) not in _SCALARS:
                        scalar = False
                        break
            self.calls_out += 1  # first: output the call makes is counted against it
            try:
                if scalar and not self._pending:
                    # The common case, written out: one small frame, one write.
                    lock = self._send_lock
                    lock.acquire()
                    try:
                        data = self.session.call_frame(qid, parent, target, op, name, args, kwargs)
                        n = _os_write(self.wfd, data)
                        if n != len(data):
                            self._write(memoryview(data)[n:])
                    finally:
                        lock.release()
                else:
                    self._send((_CALL_T, qid, parent, target, op, name, args, kwargs), scalar)
            except CapbridgeError:
                self.calls_out -= 1  # it could not be encoded: nothing was sent
                raise
            reply = self._wait(inbox, qid, stack)
        except OSError as exc:
            raise _detached(self.fail(exc)) from None
        except BaseException as exc:
            if exc is self._dead:
                raise _detached(exc) from None
            raise
        finally:
            del questions[qid]
            if armed:
                self.deadlines.pop(qid, None)
                if armed == 2:
                    timed = self._disarm(qid)
        if timed is not None and timed.fired:
            raise self._stopped(timed, reply)
        if self._interrupt is not None:
            self._interrupt_now()
        if reply[0] == _RETURN_T:
            return reply[2]
        try:
            err = self._raise_error(reply[2])
        except ProtocolError as exc:  # malformed error data ends the connection
            raise _detached(self.fail(exc)) from None
        raise _detached(err) if err is self._dead else err

    def _arm(self, qid: int, depth: int, timeout: float | None) -> int:
        """Record the deadlines of a call on the slow path; 0 none, 1 a plain wall
        deadline, 2 a :class:`Timed` record."""
        now = _monotonic()
        block = self._local.block
        soft = seconds = None
        source = "timeout"
        if timeout is not None:
            soft = now + timeout
            seconds = timeout
        if block is not None and block.when is not None and (soft is None or block.when < soft):
            soft, seconds, source = block.when, block.seconds, block.source
            if soft <= now:
                raise Timed(qid, 0, soft, None, seconds, source, block).too_late()
        hard = None
        if soft is None and not depth and self.wall is not None:
            hard = now + self.wall
        cpu = self.cpu_budget is not None and not depth
        if soft is None and block is None and not cpu:
            if hard is None:
                return 0
            self.deadlines[qid] = hard
            if hard < _watchdog.next_wake:
                _watchdog.poke()
            return 1
        rec = Timed(qid, _get_ident(), soft, hard, seconds, source, block)
        cpu_check = None
        if cpu:
            rec.cpu_budget = self.cpu_budget
            rec.cpu_start = self.cpu_clock() if self.cpu_clock is not None else 0.0
            cpu_check = now + self.cpu_budget / _NCPU  # type: ignore[operator]
        self.timed[qid] = rec
        if block is not None:
            block.qids.add(qid)
        when = rec.next_look(cpu_check)
        if when is not None:
            self.deadlines[qid] = when
            if when < _watchdog.next_wake:
                _watchdog.poke()
        return 2

    def _disarm(self, qid: int) -> Timed | None:
        rec = self.timed.pop(qid, None)
        if rec is not None and rec.block is not None:
            rec.block.qids.discard(qid)
        return rec

    def _stopped(self, rec: Timed, reply: tuple) -> BaseException:
        """The error for a call that answered after it was interrupted."""
        err = rec.stopped()
        if reply[0] != _RETURN_T:
            try:
                err.__cause__ = self._raise_error(reply[2])
            except ProtocolError as exc:
                return self.fail(exc)
        return err

    def expire(self, qid: int, reason: str) -> None:
        """Make the timed call ``qid`` due now (it gets interrupted like a timeout)."""
        rec = self.timed.get(qid)
        if rec is None or rec.fired:
            return
        rec.soft = _monotonic()
        rec.reason = reason
        self.deadlines[qid] = 0.0
        _watchdog.poke()

    def asking(self, qid: int) -> bool:
        """Whether ``qid`` still waits for its answer."""
        return qid in self._questions

    def answered(self, qid: int) -> bool:
        """Whether ``qid`` has its answer (taken already, or waiting in its inbox)."""
        inbox = self._questions.get(qid)
        if inbox is None:
            return True
        for msg in list(inbox):
            if msg[0] != _CALL_T:
                return True
        return False

    # ------------------------------------------------------------------ fan-out (host side)
    #
    # One thread drives calls on many channels at once (capbridge.gather): begin()
    # sends a call, read_ready() reads what a readable channel holds without ever
    # blocking on it, step() serves what was routed to the call, end() finishes it as
    # call() would. Calls nested in it are served by the thread that began it.

    def begin(self, target: int, op: int, name: str | None, args: tuple, kwargs: dict,
              timeout: float | None = None) -> Pending:
        """Send a call and return at once; see :meth:`step` and :meth:`end`."""
        if self._dead is not None:
            raise _detached(self._dead)
        local = self._local
        stack = local.serving
        if stack is None:
            stack = local.serving = []
        qid = self._next_qid()
        p = Pending(qid, stack)
        self._questions[qid] = p.inbox
        if timeout is None and not stack and not self._special and self.wall is not None:
            deadline = _monotonic() + self.wall  # the common case: only the wall limit
            self.deadlines[qid] = deadline
            p.armed = 1
            if deadline < _watchdog.next_wake:
                _watchdog.poke()
        elif self._timing or timeout is not None:
            try:
                p.armed = self._arm(qid, len(stack), timeout)
            except CallTimeout:
                del self._questions[qid]
                raise
        self.calls_out += 1
        msg = (_CALL_T, qid, stack[-1] if stack else 0, target, op, name, args, kwargs)
        scalar = not kwargs
        if scalar:
            for a in args:
                if type(a) not in _SCALARS:
                    scalar = False
                    break
        try:
            self._send(msg, scalar)
        except BaseException as exc:
            self.calls_out -= 1
            p.reply = ()
            try:
                self.end(p)
            except BaseException:
                pass
            if isinstance(exc, OSError):
                raise _detached(self.fail(exc)) from None
            raise
        return p

    def read_ready(self, wait: float = 0.0) -> bool:
        """Read what the peer has sent, if no other thread is reading, and route it.

        Call it when the channel is readable (or give ``wait``: seconds to wait for
        the reader and for something to read): it reads once and never waits for
        the rest of a frame. False when another thread holds the reader.
        """
        lock = self._read_lock
        if not (lock.acquire(timeout=wait) if wait > 0 else lock.acquire(False)):
            return False
        msgs: list = []
        try:
            # Readable a moment ago, but another reader (an interrupt's pump) may have
            # taken it since: look again, now that no one else can.
            ready = self._ready
            if ready is None or self._ready_fd != self.rfd:
                ready = self._ready = select.poll()
                ready.register(self.rfd, select.POLLIN)
                self._ready_fd = self.rfd
            if self._dead is None and self.rfd >= 0 and ready.poll(int(wait * 1000) if wait > 0 else 0):
                try:
                    data = _os_read(self.rfd, _READ_SIZE)
                except InterruptedError:
                    pass  # nothing read: look again
                else:
                    if not data:
                        raise EOFError("the peer closed the channel")
                    reader = self._reader
                    n = len(data)
                    if reader.idle and n >= 4 and _unpack_from(data)[0] + 4 == n and n <= self._max_frame:
                        msgs.append(self.session.decode(data, 4))
                    else:
                        reader.feed(data)
                        decode = self.session.decode
                        while True:
                            body = reader.next_frame()
                            if body is NEED_DATA:
                                break
                            msgs.append(decode(body))
        except BaseException as exc:
            self.fail(_as_error(exc))
        finally:
            lock.release()
        try:
            for msg in msgs:
                self._route(msg, None)
        except Exception:
            pass  # a protocol error: the channel is failed, and the calls on it see that
        if self._nwaiting:
            with self._cond:
                self._cond.notify_all()
        return True

    def step(self, p: Pending) -> bool:
        """Serve the calls routed to ``p`` (and top-level ones); True once its answer
        is in (or the channel is dead)."""
        inbox = p.inbox
        top = self._top
        while True:
            while inbox:
                msg = inbox.pop(0)
                if msg[0] == _CALL_T:
                    p.served += 1
                    self._serve(msg, p.stack)
                else:
                    p.reply = msg
                    return True
            if top:
                try:
                    msg = top.pop(0)
                except IndexError:
                    continue
                p.served += 1
                self._serve(msg, p.stack)
                continue
            return self._dead is not None

    def give_up(self, p: Pending) -> None:
        """Stop waiting for ``p`` (its caller was interrupted): its answer, when it
        comes, is dropped; calls nested in it are still served, from the shared queue."""
        qid = p.qid
        self._questions.pop(qid, None)
        if p.armed:
            self.deadlines.pop(qid, None)
            if p.armed == 2:
                self._disarm(qid)
        if p.reply or self._dead is not None:
            return
        calls = [m for m in p.inbox if m[0] == _CALL_T]
        if len(calls) == len(p.inbox) and len(self._given_up) < MAX_GIVEN_UP:
            self._given_up.add(qid)
        if calls:
            self._top.extend(calls)
            if self._nwaiting:
                with self._cond:
                    self._cond.notify_all()

    def end(self, p: Pending) -> Any:
        """Finish the call ``p``: its result, or raise its error (as :meth:`call`)."""
        qid = p.qid
        self._questions.pop(qid, None)
        timed = None
        if p.armed:
            self.deadlines.pop(qid, None)
            if p.armed == 2:
                timed = self._disarm(qid)
        reply = p.reply
        if not reply:
            raise _detached(self._dead or ChannelClosed("the sandbox was closed"))
        if timed is not None and timed.fired:
            raise self._stopped(timed, reply)
        if reply[0] == _RETURN_T:
            return reply[2]
        try:
            err = self._raise_error(reply[2])
        except ProtocolError as exc:
            raise _detached(self.fail(exc)) from None
        raise _detached(err) if err is self._dead else err

    def serve_forever(self) -> None:
        """Serve the peer's calls until the channel ends (the sandbox's main loop)."""
        self._wait([], 0)

    def _wait(self, inbox: list, qid: int, stack: list | None = None) -> tuple:
        """Serve what the peer sends until the answer to ``qid`` comes (``inbox``
        is where it is routed; ``stack``: this thread's serving stack)."""
        top = self._top
        read_lock = self._read_lock
        reader = self._reader
        if stack is None:
            local = self._local
            stack = local.serving
            if stack is None:
                stack = local.serving = []
        while True:
            while inbox:
                msg = inbox.pop(0)
                if msg[0] == _CALL_T:
                    self._serve(msg, stack)
                else:
                    return msg
            if top:
                try:
                    msg = top.pop(0)
                except IndexError:
                    pass
                else:
                    self._serve(msg, stack)
                    continue
            if self._dead is not None:
                raise self._dead
            if read_lock.acquire(False):
                msgs = None
                try:
                    if reader.idle:
                        # The common case, written out: one read brings one whole frame.
                        try:
                            data = _os_read(self.rfd, _READ_SIZE)
                            n = len(data)
                        except InterruptedError:
                            data = None
                            n = 0
                        if n >= 4 and _unpack_from(data)[0] + 4 == n <= self._max_frame:
                            msg = self.session.decode(data, 4)
                        else:
                            msgs = self._read_messages(data)
                    else:
                        msgs = self._read_messages()
                except BaseException as exc:
                    read_lock.release()
                    dead = self.fail(_as_error(exc))
                    if isinstance(exc, KeyboardInterrupt):
                        raise  # Ctrl-C goes on as itself; the half-read channel is dead
                    raise dead from None
                read_lock.release()
                if msgs is None or len(msgs) == 1 and not self._nwaiting:
                    if msgs is not None:
                        msg = msgs[0]
                    if not self._nwaiting:
                        tag = msg[0]
                        if tag == _RETURN_T or tag == _RAISE_T:
                            if msg[1] == qid:
                                return msg
                        elif tag == _CALL_T and (not msg[2] or msg[2] == qid):
                            self._serve(msg, stack)  # top-level, or nested in the call we wait for
                            continue
                    msgs = [msg]
                for msg in msgs:
                    self._route(msg, inbox)
                if self._nwaiting:
                    with self._cond:
                        self._cond.notify_all()
                if self._interrupt is not None:
                    self._abandon(inbox, qid)
            else:
                with self._cond:
                    self._nwaiting += 1
                    try:
                        while not inbox and not top and read_lock.locked() and self._dead is None:
                            self._cond.wait(0.5)
                    finally:
                        self._nwaiting -= 1
                if self._interrupt is not None:
                    self._abandon(inbox, qid)

    def _route(self, msg: tuple, me: list | None) -> None:
        tag = msg[0]
        if tag == _CALL_T:
            target = self._questions.get(msg[2]) if msg[2] else None
            if target is None:
                self._top.append(msg)
            else:
                target.append(msg)
            if target is not me and self._nwaiting:
                with self._cond:
                    self._cond.notify_all()
            return
        if tag == _RETURN_T or tag == _RAISE_T:
            w = self._questions.get(msg[1])
            if w is None:
                if self._trusted:
                    return  # a late answer to a question an interrupt made us give up
                if msg[1] in self._given_up:
                    self._given_up.discard(msg[1])
                    return
                raise self.fail(ProtocolError(f"answer to unknown question {msg[1]}"))
            w.append(msg)
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

    def _serve(self, msg: tuple, stack: list | None = None) -> None:
        """Run the peer's CALL ``msg`` and send its answer (``stack``: this thread's
        serving stack, when the caller has it at hand)."""
        session = self.session
        qid = msg[1]
        if stack is None:
            local = self._local
            stack = local.serving
            if stack is None:
                stack = local.serving = []
        stack.append(qid)
        answers = session.tables.answers
        answers[qid] = True
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
                if type(result) in _SCALARS and not self._pending:
                    # The common case, written out: one small frame, one write.
                    lock = self._send_lock
                    lock.acquire()
                    try:
                        data = session.return_frame(qid, result)
                        n = _os_write(self.wfd, data)
                        if n != len(data):
                            self._write(memoryview(data)[n:])
                    except OSError as exc:
                        raise self.fail(exc) from None
                    finally:
                        lock.release()
                else:
                    self._send((_RETURN_T, qid, result), type(result) in _SCALARS)
            except CapbridgeError as exc:
                if self._dead is not None:
                    raise
                self._reply_error(qid, exc)
        finally:
            stack.pop()
            del answers[qid]

    def _reply_error(self, qid: int, exc: BaseException) -> None:
        if isinstance(exc, (KeyboardInterrupt, SystemExit)) and not self._trusted:
            raise exc
        body = self.session.raise_body(qid, exc)
        with self._send_lock:
            self._write_frame(body)

    # ------------------------------------------------------------------ interrupts

    def interrupt(self, tokens: list[int], frame: Any) -> None:
        """Stop the call a token names if this thread serves it (the sandbox's
        signal handler calls this on the main thread)."""
        stack = self._local.serving
        if not stack:
            return
        for qid in stack:
            if qid & _TOKEN_MASK in tokens:
                break
        else:
            return  # a late signal for a call that has ended
        if _user_code_running(frame):
            self._interrupt = None
            raise CallTimeout(_INTERRUPTED)
        self._interrupt_ident = _get_ident()
        self._interrupt = qid

    def _take_interrupt(self) -> bool:
        """Whether this thread must stop now for a deferred interrupt (clears it)."""
        qid = self._interrupt
        if qid is None or _get_ident() != self._interrupt_ident:
            return False
        self._interrupt = None
        return qid in (self._local.serving or ())

    def _interrupt_now(self) -> None:
        if self._take_interrupt():
            raise CallTimeout(_INTERRUPTED)

    def _abandon(self, inbox: list, qid: int) -> None:
        """Give up waiting for the answer to ``qid`` if an interrupt is due.

        Calls nested in that question go to the shared queue, so they are still
        served; the answer, when it comes, is dropped.
        """
        for msg in inbox:
            if msg[0] != _CALL_T:
                return  # the answer is here: call() raises once it has taken it
        if not qid or not self._take_interrupt():
            return
        if inbox:
            self._top.extend(inbox)
            inbox.clear()
            if self._nwaiting:
                with self._cond:
                    self._cond.notify_all()
        raise CallTimeout(_INTERRUPTED)

    def pump(self, timeout: float) -> None:
        """Read and route what the peer sent, waiting up to ``timeout`` seconds for it,
        unless another thread is reading (host side, while an interrupt's grace runs).

        It reads once, as :meth:`read_ready`: waiting here for the rest of a frame
        would let a peer that sends half of one hold the reader - and the kill that
        ends the grace, which is decided on the same thread - for ever.
        """
        if self._dead is None:
            self.read_ready(timeout)

    def wake(self) -> None:
        """Send an empty RELEASE if the peer has nothing left to read, so a peer
        blocked reading the channel looks at a pending interrupt (host side)."""
        lock = self._send_lock
        if self._dead is not None or not lock.acquire(timeout=0.05):
            return
        try:
            if _unread(self.wfd) == 0:
                body = self.session.release_body(())
                self._write(_pack(len(body)) + body)
        except OSError:
            pass
        finally:
            lock.release()

    # ------------------------------------------------------------------ reading

    def _read_messages(self, data: Any = _UNREAD) -> list[tuple]:
        """Read at least one whole frame and decode every whole frame read.

        ``data``: what a read the caller already made brought (None when that read
        was interrupted).
        """
        reader = self._reader
        decode = self.session.decode
        if reader.idle:
            # Fast path: one read brings exactly one whole frame.
            if data is _UNREAD:
                try:
                    data = _os_read(self.rfd, _READ_SIZE)
                except InterruptedError:
                    data = None
            if data is not None:
                n = len(data)
                if not n:
                    raise EOFError("the peer closed the channel")
                if n >= 4:
                    size = _unpack_from(data)[0]
                    if size + 4 == n and size <= self._max_frame:
                        return [decode(data, 4)]
                    if size + 4 > n and size <= self._max_frame:
                        # One large frame: read the rest straight into a buffer of
                        # its (already checked) size instead of growing one.
                        return [decode(self._read_large(size, memoryview(data)[4:]))]
                reader.feed(data)
        elif data is not None and data is not _UNREAD:
            reader.feed(data)
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
                data = _os_read(self.rfd, min(max(want, _READ_SIZE), 1 << 24))
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

    def read_one(self, timeout: float | None = None) -> bytes:
        """Read and return the next body without routing it (for handshakes).

        Raises ``TimeoutError`` if it has not arrived within ``timeout`` seconds.
        """
        end = None if timeout is None else _monotonic() + timeout
        with self._read_lock:
            body = self._reader.next_frame()
            while body is NEED_DATA:
                if end is not None and not _readable(self.rfd, end - _monotonic()):
                    raise TimeoutError("the peer sent nothing in time")
                data = os.read(self.rfd, _READ_SIZE)
                if not data:
                    raise EOFError("the peer closed the channel")
                self._reader.feed(data)
                body = self._reader.next_frame()
            return body


_INTERRUPTED = "the host interrupted this call: its deadline passed"
_OWN_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_CHANNEL_CODES = frozenset(
    f.__code__ for f in vars(Channel).values() if hasattr(f, "__code__")
)
_SERVE_CODE = Channel._serve.__code__


def _user_code_running(frame: Any) -> bool:
    """Whether an exception raised at ``frame`` lands in code the channel serves.

    Walking out from the running frame: inside the channel (reading, routing,
    encoding, sending) an exception could lose half a message, so the answer is
    no; user code - reached from the channel only through ``_serve`` - is yes.
    capbridge frames directly under user code are the dispatch path (or a decode
    calling user code, which then meets a channel frame other than ``_serve``).
    """
    seen_user = False
    f = frame
    while f is not None:
        code = f.f_code
        if code in _CHANNEL_CODES:
            return seen_user and code is _SERVE_CODE
        if not code.co_filename.startswith(_OWN_DIR):
            seen_user = True
        elif not seen_user:
            return False
        f = f.f_back
    return False


def _readable(fd: int, timeout: float) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    try:
        return bool(poller.poll(max(0, int(timeout * 1000))))
    except InterruptedError:
        return False


def _unread(fd: int) -> int:
    """Bytes written to the pipe behind ``fd`` and not read yet."""
    buf = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, buf, True)
    return buf[0]


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
