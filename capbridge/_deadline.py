"""Per-call deadlines: what a timed call records, ``Sandbox.deadline()`` blocks, and
what happens when a deadline passes.

Three limits end a call from the host into the sandbox:

* the hard limit ``Limits.wall_seconds`` on each outermost call: the sandbox is
  killed (:class:`SandboxTimeout`);
* a soft deadline - ``timeout=`` on one call, or a :class:`DeadlineBlock` around
  several - which replaces the hard limit for that call;
* the per-call CPU budget ``Limits.call_cpu_seconds``.

A soft deadline or a spent CPU budget *interrupts* the call (see
:mod:`capbridge._interrupt`) and gives it a grace period to stop; the interrupt is
repeated every few milliseconds meanwhile. If the call's answer arrives in time the
caller gets :class:`CallTimeout` and the sandbox lives on, otherwise it is killed.
While the grace runs a helper thread reads the channel, so an answer is seen even
when the thread that waits for it is busy running a capability for the sandbox.
"""

from __future__ import annotations

import os
import threading
import time
TYPE_CHECKING = False
if TYPE_CHECKING:  # (typing is not imported at run time: it costs start-up)
    from typing import Any, Callable

from ._errors import CallTimeout, CPULimitExceeded, SandboxError, SandboxTimeout

__all__ = ["Timed", "DeadlineBlock", "Enforcer", "DEFAULT_GRACE"]

#: Seconds interrupted code gets to stop before the sandbox is killed.
DEFAULT_GRACE = 0.5
_RESEND = 0.02
_MIN_CPU_CHECK = 0.005
_NCPU = os.cpu_count() or 1
_monotonic = time.monotonic


class Timed:
    """What the channel keeps for a call that has more than a hard wall limit."""

    __slots__ = ("qid", "ident", "soft", "hard", "seconds", "source", "block", "cpu_start",
                 "cpu_budget", "fired", "reason")

    def __init__(self, qid: int, ident: int, soft: float | None, hard: float | None,
                 seconds: float | None, source: str, block: "DeadlineBlock | None") -> None:
        self.qid = qid
        self.ident = ident  # the host thread that made the call
        self.soft = soft  # when to interrupt (monotonic), or None
        self.hard = hard  # when to kill without asking (Limits.wall_seconds), or None
        self.seconds = seconds  # the soft limit as the user gave it, for messages
        self.source = source  # "timeout" or "deadline"
        self.block = block
        self.cpu_start: float | None = None
        self.cpu_budget: float | None = None
        self.fired = 0.0  # when the interrupt was sent
        self.reason = ""  # "timeout", "deadline", "cpu" or "cancelled"

    def next_look(self, cpu_check: float | None = None) -> float | None:
        """The earliest time the watchdog must look at this call again."""
        when = None
        for t in (self.soft, self.hard, cpu_check):
            if t is not None and (when is None or t < when):
                when = t
        return when

    def _what(self) -> str:
        if self.reason == "cpu":
            return f"the call used more than Limits.call_cpu_seconds={self.cpu_budget:g} CPU seconds"
        if self.reason == "cancelled":
            return "the call was cancelled"
        if self.reason == "deadline":
            return f"the call ran past the deadline of its Sandbox.deadline({self.seconds:g}) block"
        return f"the call ran past its timeout={self.seconds:g} seconds"

    def stopped(self) -> CallTimeout:
        return CallTimeout(f"{self._what()}; its code was interrupted and stopped, and the sandbox "
                           "lives on")

    def too_late(self) -> CallTimeout:
        what = (f"timeout={self.seconds:g} seconds" if self.source == "timeout"
                else f"deadline of the Sandbox.deadline({self.seconds:g}) block")
        return CallTimeout(f"the {what} had passed before the call started; it was not sent")

    def killed(self, grace: float) -> SandboxError:
        text = (f"{self._what()} and did not stop within {grace:g}s of being interrupted; "
                "the sandbox was killed")
        return CPULimitExceeded(text) if self.reason == "cpu" else SandboxTimeout(text)


class DeadlineBlock:
    """``with sb.deadline(seconds):`` - one deadline for every call this thread makes
    into the sandbox inside the block (front-door calls and proxy calls alike).

    The clock starts when the block is entered. Blocks nest (the earlier deadline
    wins), and ``timeout=`` on a call inside a block also gives way to an earlier
    block deadline. ``seconds=None`` makes a block without a deadline whose calls can
    still be stopped with :meth:`expire`.
    """

    def __init__(self, chan: Any, seconds: float | None, *, until: float | None = None,
                 source: str = "deadline") -> None:
        self._chan = chan
        self.seconds = seconds
        self.source = source
        self._until = until
        self.when: float | None = None
        self.qids: set[int] = set()
        self._parent: DeadlineBlock | None = None
        self._entered = False

    @property
    def remaining(self) -> float | None:
        """Seconds left before the deadline (negative once passed), or None."""
        return None if self.when is None else self.when - _monotonic()

    def __enter__(self) -> "DeadlineBlock":
        if self._entered:
            raise RuntimeError("a deadline block cannot be entered twice; make a new one")
        self._entered = True
        chan = self._chan
        when = self._until
        if when is None and self.seconds is not None:
            when = _monotonic() + self.seconds
        local = chan.thread_state()
        parent = local.block
        if parent is not None and parent.when is not None and (when is None or parent.when < when):
            when = parent.when
            self.seconds, self.source = parent.seconds, parent.source
        self.when = when
        self._parent = parent
        local.block = self
        chan.add_special(1)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._chan.thread_state().block = self._parent
        self._chan.add_special(-1)

    def expire(self, reason: str = "cancelled") -> None:
        """Interrupt the calls running under this block now (from any thread).

        :param reason: what the error messages give as the cause (``"cancelled"``).
        """
        self.when = _monotonic()
        for qid in list(self.qids):
            self._chan.expire(qid, reason)


class Enforcer:
    """Decides what to do with a call whose time is up: look again, interrupt, or kill.

    ``interrupt(timed)`` asks the sandbox to stop the call, ``kill(error)`` ends the
    sandbox, ``cpu_now()`` reads its CPU seconds; ``grace()`` is the grace period.
    """

    def __init__(self, chan: Any, *, interrupt: Callable[[Timed], None],
                 kill: Callable[[BaseException], None], cpu_now: Callable[[], float],
                 grace: Callable[[], float], wall: float | None) -> None:
        self.chan = chan
        self.interrupt = interrupt
        self.kill = kill
        self.cpu_now = cpu_now
        self.grace = grace
        self.wall = wall

    def fire(self, qid: int) -> None:
        """The watchdog's callback: ``qid``'s look-again time has come (never blocks)."""
        chan = self.chan
        # An answer already routed to the call ends it, even if the thread waiting for
        # it has not taken it yet (gather's thread may be serving another sandbox's
        # callback): a call that answered in time is neither interrupted nor killed.
        if chan.dead is not None or chan.answered(qid):
            return
        rec = chan.timed.get(qid)
        if rec is None:
            self._kill_unless_answered(qid)
            return
        if rec.fired:
            return
        now = _monotonic()
        if rec.hard is not None and now >= rec.hard:
            self._kill_unless_answered(qid)
            return
        reason = ""
        cpu_check = None
        if rec.soft is not None and now >= rec.soft:
            reason = rec.reason or rec.source
        elif rec.cpu_start is not None and rec.cpu_budget is not None:
            used = self.cpu_now() - rec.cpu_start
            if used >= rec.cpu_budget:
                reason = "cpu"
            else:
                cpu_check = now + max(_MIN_CPU_CHECK, (rec.cpu_budget - used) / _NCPU)
        if not reason:
            when = rec.next_look(cpu_check)
            if when is not None:
                chan.deadlines[qid] = when
            return
        rec.fired = now
        rec.reason = reason
        threading.Thread(target=self._supervise, args=(rec,), name="capbridge-interrupt",
                         daemon=True).start()

    def _kill_unless_answered(self, qid: int) -> None:
        """Kill for the wall limit - on a helper thread that first reads what the
        channel holds, since the answer may wait there unread (see :meth:`fire`)."""
        def run() -> None:
            self.chan.pump(0.0)
            if not self.chan.answered(qid):
                self.kill(self.wall_error())

        threading.Thread(target=run, name="capbridge-interrupt", daemon=True).start()

    def wall_error(self) -> SandboxTimeout:
        return SandboxTimeout(f"a call into the sandbox ran longer than Limits.wall_seconds={self.wall}; "
                              "the sandbox was killed")

    def _supervise(self, rec: Timed) -> None:
        """Interrupt ``rec``'s call, repeat it through the grace period, kill if unanswered."""
        chan = self.chan
        # The answer may also sit unread in the channel for the same reason: look first.
        chan.pump(0.0)
        if chan.answered(rec.qid):
            rec.fired = 0.0
            return
        grace = self.grace()
        kill_at = rec.fired + grace
        next_send = 0.0
        strikes = 0
        while chan.dead is None and not chan.answered(rec.qid):
            now = _monotonic()
            if now >= kill_at:
                # Look twice: the answer may be in the hands of a thread that read it
                # a moment ago and has not yet returned.
                strikes += 1
                if strikes > 1:
                    self.kill(rec.killed(grace))
                    return
                chan.pump(_RESEND)
                continue
            if now >= next_send:
                try:
                    self.interrupt(rec)
                except OSError:
                    pass  # the process is gone; the channel will say how
                next_send = now + _RESEND
            chan.pump(min(next_send, kill_at) - now)

