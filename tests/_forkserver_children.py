"""Stand-in sandbox entry points for the fork server tests.

A test-only :class:`sandbox_vm._spawn.ForkServer` is started with
``entry="_forkserver_children:obey"``; the entry is fixed in the server's argv when it
starts, so nothing a sandbox sends can select it.
"""

from __future__ import annotations

import os
import sys


def obey(rfd: int, wfd: int, config: object) -> None:
    """Say ``up``, then run one command from the host: ``exit N``, ``print TEXT``,
    ``signal PID``,
    ``segv``, ``hang``, ``sleep``; end of channel exits 0."""
    os.write(wfd, b"up")
    cmd = os.read(rfd, 1000)
    if cmd.startswith(b"exit "):
        os._exit(int(cmd[5:]))
    if cmd.startswith(b"print "):
        sys.stdout.write(cmd[6:].decode() + "\n")
        sys.stdout.flush()
        sys.stderr.write("err:" + cmd[6:].decode() + "\n")
        sys.stderr.flush()
        os.write(wfd, b"done")
        os.read(rfd, 1)
        os._exit(0)
    if cmd.startswith(b"signal "):  # may this process signal that pid?
        import errno

        try:
            os.kill(int(cmd[7:]), 0)
            answer = b"allowed"
        except OSError as exc:
            answer = errno.errorcode[exc.errno].encode()
        os.write(wfd, answer)
        os.read(rfd, 1)
        os._exit(0)
    if cmd == b"segv":
        import ctypes

        ctypes.string_at(0)
    if cmd == b"sleep":  # deaf to the channel: only a signal ends it
        import time

        while True:
            time.sleep(60)
    if cmd == b"hang":
        while True:
            os.read(rfd, 1000) or os._exit(0)
    os._exit(0)
