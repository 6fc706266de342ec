"""Delivery of sandbox stdout/stderr to the host, capped at ``Limits.max_output_kb``.

One thread serves every sandbox's output pipes; a sandbox's output is also drained
synchronously after each front-door call, so what a call printed has been delivered
when it returns.
"""

from __future__ import annotations

import codecs
import os
import selectors
import sys
import threading
from typing import Any

__all__ = ["OutputSink", "pump"]

STDERR_TAIL_BYTES = 1024
STDERR_TAIL_LINES = 5


class OutputSink:
    """Where one sandbox's output goes; shares one byte budget for both streams."""

    def __init__(self, label: str, stdout: Any, stderr: Any, cap_bytes: int | None) -> None:
        self.label = label
        self.cap = cap_bytes
        self.kept = 0
        self.truncated = False
        self.lock = threading.RLock()
        self.streams: dict[int, _Stream] = {}
        self._targets = {1: stdout, 2: stderr}
        self._stderr_tail = bytearray()  # kept past the cap, for crash messages

    def add(self, fd: int, which: int) -> None:
        os.set_blocking(fd, False)
        self.streams[fd] = _Stream(self, which, self._targets[which])

    def feed(self, fd: int) -> bool:
        """Read what is available on ``fd``; False at end of file."""
        stream = self.streams.get(fd)
        if stream is None:
            return False
        with self.lock:
            while True:
                try:
                    data = os.read(fd, 65536)
                except BlockingIOError:
                    return True
                except OSError:
                    data = b""
                if not data:
                    stream.finish()
                    return False
                if stream.which == 2:
                    self._stderr_tail += data
                    del self._stderr_tail[:-STDERR_TAIL_BYTES]
                self._deliver(stream, data)

    def _deliver(self, stream: "_Stream", data: bytes) -> None:
        if self.cap is not None:
            room = self.cap - self.kept
            if room <= 0:
                self._note_truncated(stream)
                return
            if len(data) > room:
                data = data[:room]
            self.kept += len(data)
            stream.write(data)
            if self.kept >= self.cap:
                self._note_truncated(stream)
        else:
            stream.write(data)

    def _note_truncated(self, stream: "_Stream") -> None:
        if not self.truncated:
            self.truncated = True
            stream.finish()
            stream.emit(f"\n[{self.label}: output cut off at {self.cap // 1024} KiB "
                        f"(Limits.max_output_kb); the rest is discarded]\n")

    def drain(self) -> None:
        for fd in list(self.streams):
            self.feed(fd)

    def stderr_note(self) -> str:
        """``"; its stderr ended with: ..."`` (the last lines the sandbox wrote there), or ``""``.

        For the error of a sandbox that died: native code that calls ``exit()`` or
        crashes says why only on stderr. Control characters are shown as escapes.
        """
        with self.lock:
            text = self._stderr_tail.decode("utf-8", "replace")
        lines = [line for line in text.splitlines() if line.strip()][-STDERR_TAIL_LINES:]
        if not lines:
            return ""
        return "; its stderr ended with: " + " | ".join(lines).translate(_VISIBLE_CONTROLS)


_VISIBLE_CONTROLS = {c: f"\\x{c:02x}" for c in [*range(0, 9), *range(11, 32), 127]}
_VISIBLE_CONTROLS.update({0x9B: "\\x9b"})  # the one-byte CSI


class _Stream:
    def __init__(self, sink: OutputSink, which: int, target: Any) -> None:
        self.sink = sink
        self.which = which
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.prefix_lines = target is None
        self.at_line_start = True
        self.target = target

    def _out(self, text: str) -> None:
        target = self.target
        if target is None:
            target = sys.stdout if self.which == 1 else sys.stderr
        if callable(target) and not hasattr(target, "write"):
            target(text)
        else:
            target.write(text)
            try:
                target.flush()
            except Exception:
                pass

    def emit(self, text: str) -> None:
        if not text:
            return
        if self.prefix_lines:
            # On a terminal, carriage returns and escape sequences could erase the
            # prefix and pass sandbox output off as the host's: show them as escapes.
            text = text.translate(_VISIBLE_CONTROLS)
            tag = f"[{self.sink.label}{'' if self.which == 1 else ' stderr'}] "
            out = []
            for line in text.splitlines(keepends=True):
                if self.at_line_start:
                    out.append(tag)
                out.append(line)
                self.at_line_start = line.endswith("\n")
            text = "".join(out)
        try:
            self._out(text)
        except Exception:
            pass

    def write(self, data: bytes) -> None:
        self.emit(self.decoder.decode(data))

    def finish(self) -> None:
        self.emit(self.decoder.decode(b"", final=True))


class _Pump:
    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        self.sel.register(self.wake_r, selectors.EVENT_READ, None)

    def register(self, sink: OutputSink) -> None:
        with self.lock:
            for fd in sink.streams:
                self.sel.register(fd, selectors.EVENT_READ, sink)
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="capbridge-output", daemon=True)
                self.thread.start()
        os.write(self.wake_w, b"x")

    def unregister(self, sink: OutputSink) -> None:
        with self.lock:
            for fd in sink.streams:
                try:
                    self.sel.unregister(fd)
                except (KeyError, ValueError):
                    pass
        os.write(self.wake_w, b"x")

    def _run(self) -> None:
        while True:
            try:
                events = self.sel.select()
            except OSError:
                continue
            for key, _ in events:
                if key.data is None:
                    try:
                        os.read(self.wake_r, 4096)
                    except BlockingIOError:
                        pass
                    continue
                sink: OutputSink = key.data
                if not sink.feed(key.fd):
                    with self.lock:
                        try:
                            self.sel.unregister(key.fd)
                        except (KeyError, ValueError):
                            pass
            with self.lock:
                pass


_PUMP: _Pump | None = None
_PUMP_LOCK = threading.Lock()


def pump() -> _Pump:
    global _PUMP
    with _PUMP_LOCK:
        if _PUMP is None or _PUMP_PID != os.getpid():
            _reset()
        return _PUMP  # type: ignore[return-value]


_PUMP_PID = 0


def _reset() -> None:
    global _PUMP, _PUMP_PID
    _PUMP = _Pump()
    _PUMP_PID = os.getpid()
