"""Drive ``capbridge shell`` through a pseudo-terminal, as a person at a keyboard would.

``PtyShell`` starts the shell with a pty as its controlling terminal (so readline is
active and Ctrl-C is a real SIGINT from the terminal), types keys and waits for text.
Every wait is bounded; the process is killed when the test ends.
"""

from __future__ import annotations

import fcntl
import os
import pathlib
import pty
import re
import select
import signal
import struct
import sys
import termios
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Terminal control sequences readline emits (cursor moves, bracketed paste on/off).
_CONTROL_NO_CR = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[>=]|\x07")
_CONTROL = re.compile(_CONTROL_NO_CR.pattern + r"|\r")

UP = "\x1b[A"
CTRL_C = "\x03"
CTRL_D = "\x04"
TAB = "\t"


class PtyShell:
    def __init__(self, *args: str, cwd: pathlib.Path | None = None, wait: float = 30,
                 confinement: str = "strict") -> None:
        argv = [sys.executable, "-m", "capbridge", "shell", f"--confinement={confinement}", *args]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TERM": "dumb", "INPUTRC": "/dev/null"}
        env.pop("PYTHONSTARTUP", None)
        self.wait = wait
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: becomes the shell
            try:
                os.chdir(cwd or ROOT)
                os.execve(argv[0], argv, env)
            finally:
                os._exit(127)
        # A real terminal has a size; readline lists completions only with one.
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
        self.raw = ""
        self.seen = 0  # how much of the output an expect() has consumed

    def send(self, keys: str) -> None:
        os.write(self.fd, keys.encode())

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # the child closed the terminal
            return False
        if not data:
            return False
        self.raw += data.decode("utf-8", "replace")
        return True

    @property
    def text(self) -> str:
        """Everything shown so far, without terminal control sequences."""
        return _CONTROL.sub("", self.raw)

    def expect(self, pattern: str, timeout: float | None = None) -> str:
        """Wait until ``pattern`` (a regex) appears after the last match; returns the text up to it."""
        deadline = time.monotonic() + (timeout or self.wait)
        regex = re.compile(pattern)
        while True:
            text = self.text
            m = regex.search(text, self.seen)
            if m:
                before = text[self.seen:m.end()]
                self.seen = m.end()
                return before
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(min(left, 0.5)) and not regex.search(self.text, self.seen):
                raise AssertionError(f"timed out waiting for {pattern!r}; the screen shows:\n{self.text[-3000:]}")

    @property
    def line(self) -> str:
        """The line being edited, as shown (after the last newline or carriage return)."""
        return re.split(r"[\r\n]", _CONTROL_NO_CR.sub("", self.raw))[-1]

    def expect_line(self, expected: str, timeout: float | None = None) -> None:
        """Wait until the line being edited reads ``expected`` (prompt included)."""
        deadline = time.monotonic() + (timeout or self.wait)
        while self.line != expected:
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(min(left, 0.5)):
                raise AssertionError(f"timed out waiting for the line {expected!r}; it reads {self.line!r}")
        self.seen = len(self.text)

    def prompt(self) -> str:
        """Wait for the next ``>>>`` prompt; returns what came before it."""
        return self.expect(r">>> ")

    def close(self) -> int:
        """End the shell (Ctrl-D, then a kill if it lingers); its exit status."""
        try:
            self.send(CTRL_D)
        except OSError:
            pass
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
            self._read(0.2)
        os.kill(self.pid, signal.SIGKILL)
        _, status = os.waitpid(self.pid, 0)
        os.close(self.fd)
        return os.waitstatus_to_exitcode(status)
