"""How the host interrupts code running in a sandbox, and how the sandbox takes it.

The host sends two real-time signals through the sandbox's pidfd, so they reach that
process and no other (a pid can be reused by the time it is signalled; a pidfd
cannot):

* ``TOKEN`` carries the question id of the call to stop as its ``si_value``. Real-time
  signals queue, so every send arrives. The sandbox keeps ``TOKEN`` blocked and only
  collects it with ``sigtimedwait``.
* ``WAKE`` makes the sandbox's main thread run the handler: at the next bytecode, or
  at once if it is blocked in a wait such as ``time.sleep``.

The handler passes the tokens to the channel, which raises :class:`CallTimeout` only
if one of them names a call the main thread is serving right now: a signal that
arrives after its call ended (or before the next one started) names a call that no
longer runs and is ignored. The sandbox can signal only itself, so all it can do with
this machinery is stop its own code; code that ignores or blocks the signals is
killed when the grace period ends.
"""

from __future__ import annotations

import os
import signal
TYPE_CHECKING = False
if TYPE_CHECKING:  # (typing is not imported at run time: it costs start-up)
    from typing import Any, Callable

__all__ = ["TOKEN", "WAKE", "MASK", "send", "install"]

TOKEN = signal.SIGRTMIN + 4
WAKE = signal.SIGRTMIN + 5
#: Tokens are question ids modulo 2**31 (``si_value`` is an int).
MASK = 0x7FFFFFFF
_SI_QUEUE = -1
_NR_PIDFD_SEND_SIGNAL = 424  # the same number on every architecture
_syscall: Any = None


def _queue_signal(pidfd: int, sig: int, value: int) -> None:
    """``pidfd_send_signal`` with a ``siginfo`` whose ``si_value`` is ``value``."""
    global _syscall
    import ctypes

    if _syscall is None:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.syscall
        fn.restype = ctypes.c_long
        fn.argtypes = (ctypes.c_long, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_uint)
        _syscall = fn
    # struct siginfo (x86_64, aarch64): signo, errno, code, padding, then the
    # _rt member of the union: pid, uid, sigval - 128 bytes in all.
    info = (ctypes.c_int * 32)()
    info[0], info[1], info[2] = sig, 0, _SI_QUEUE
    info[4], info[5], info[6] = os.getpid(), os.getuid(), value & MASK
    if _syscall(_NR_PIDFD_SEND_SIGNAL, pidfd, sig, ctypes.addressof(info), 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def send(pidfd: int, token: int) -> None:
    """Ask the process behind ``pidfd`` to stop the call ``token`` (host side)."""
    _queue_signal(pidfd, TOKEN, token)
    signal.pidfd_send_signal(pidfd, WAKE)


def install(on_tokens: Callable[[list[int], Any], None]) -> None:
    """Route interrupts to ``on_tokens(tokens, frame)`` (sandbox side, main thread).

    Threads started later inherit the blocked ``TOKEN``, so it waits in the queue for
    the handler instead of being taken by whichever thread runs.
    """

    def on_wake(signum: int, frame: Any) -> None:
        tokens = []
        for _ in range(64):
            info = signal.sigtimedwait((TOKEN,), 0)
            if info is None:
                break
            if info.si_code == _SI_QUEUE:
                tokens.append(info.si_status & MASK)  # si_status shares si_value's place
        if tokens:
            on_tokens(tokens, frame)

    signal.pthread_sigmask(signal.SIG_BLOCK, (TOKEN,))
    signal.signal(TOKEN, _ignore)  # a handler, so the kernel queues it for a PID-namespace init
    signal.signal(WAKE, on_wake)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, (WAKE,))


def _ignore(signum: int, frame: Any) -> None:
    return None
