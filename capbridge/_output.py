"""Delivery of sandbox stdout/stderr to the host, capped per call at ``Limits.max_output_kb``.

One thread serves every sandbox's output pipes; a sandbox's output is also drained
synchronously after each front-door call, so what a call printed has been delivered
when it returns. The byte budget starts afresh with every call into the sandbox.
While :meth:`OutputSink.begin_capture` is in force (``Sandbox.execute``) output is
kept in a :class:`Capture` instead of being delivered.
"""

from __future__ import annotations

import codecs
import os
import selectors
import sys
import threading
from typing import Any, Callable

__all__ = ["OutputSink", "Capture", "pump"]


class Capture:
    """One run's stdout and stderr, each kept up to ``cap`` bytes."""

    def __init__(self, cap: int | None) -> None:
        self.cap = cap
        self._parts: dict[int, list[str]] = {1: [], 2: []}
        self._kept = {1: 0, 2: 0}
        self._dropped = {1: 0, 2: 0}
        self._decoders = {w: codecs.getincrementaldecoder("utf-8")(errors="replace") for w in (1, 2)}

    def feed(self, which: int, data: bytes) -> None:
        if self.cap is not None:
            room = self.cap - self._kept[which]
            if len(data) > room:
                self._dropped[which] += len(data) - max(room, 0)
                data = data[:max(room, 0)]
            self._kept[which] += len(data)
        if data:
            self._parts[which].append(self._decoders[which].decode(data))

    def text(self, which: int) -> str:
        """Everything kept, with a visible marker where the cap cut it off."""
        parts = self._parts[which]
        parts.append(self._decoders[which].decode(b"", final=True))
        text = "".join(parts)
        dropped = self._dropped[which]
        if dropped:
            text += ("" if text.endswith("\n") or not text else "\n") + (
                f"[output cut off at {self.cap // 1024} KiB (Limits.max_output_kb): "  # type: ignore[operator]
                f"{dropped} more bytes discarded]\n")
        return text

STDERR_TAIL_BYTES = 1024
STDERR_TAIL_LINES = 5


class OutputSink:
    """Where one sandbox's output goes; one byte budget per call for both streams.

    ``epoch()`` names the current call (the budget starts afresh when it changes).
    """

    def __init__(self, label: str, stdout: Any, stderr: Any, cap_bytes: int | None,
                 epoch: Callable[[], int] | None = None) -> None:
        self.label = label
        self.cap = cap_bytes
        self.kept = 0
        self.truncated = False
        self.lock = threading.RLock()
        self.streams: dict[int, _Stream] = {}
        self._targets = {1: stdout, 2: stderr}
        self._stderr_tail = bytearray()  # kept past the cap, for crash messages
        self._epoch_of = epoch
        self._epoch = -1
        self._capture: Capture | None = None

    def add(self, fd: int, which: int) -> None:
        os.set_blocking(fd, False)
        self.streams[fd] = _Stream(self, which, self._targets[which])

    def set_targets(self, stdout: Any, stderr: Any) -> None:
        """Send later output to ``stdout`` / ``stderr`` (None: the host's, prefixed)."""
        with self.lock:
            self._targets = {1: stdout, 2: stderr}
            for stream in self.streams.values():
                stream.finish()
                stream.retarget(self._targets[stream.which])

    def begin_capture(self) -> Capture:
        """Keep output in a new :class:`Capture` (each stream capped at the budget)."""
        with self.lock:
            self.drain()  # what came before belongs to earlier calls
            self._capture = Capture(self.cap)
            return self._capture

    def end_capture(self) -> Capture:
        """Stop capturing (after taking what is in the pipes now); returns the capture."""
        with self.lock:
            self.drain()
            capture, self._capture = self._capture, None
        assert capture is not None
        return capture

    def feed(self, fd: int) -> bool:
        """Read what is available on ``fd``; False at end of file, or once closed."""
        with self.lock:
            stream = self.streams.get(fd)
            if stream is None:
                return False  # closed: the fd number may belong to another file now
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
                if self._capture is not None:
                    self._capture.feed(stream.which, data)
                else:
                    self._deliver(stream, data)

    def _deliver(self, stream: "_Stream", data: bytes) -> None:
        if self.cap is not None:
            epoch = self._epoch_of() if self._epoch_of is not None else 0
            if epoch != self._epoch:
                self._epoch = epoch
                self.kept = 0
                self.truncated = False
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
            stream.emit(f"\n[{self.label}: output cut off at {self.cap // 1024} KiB "  # type: ignore[operator]
                        f"(Limits.max_output_kb); the rest of this call's output is discarded]\n")

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

    def detach(self) -> None:
        """Forget the fds (call with ``lock`` held, before they are closed)."""
        self.streams.clear()


_VISIBLE_CONTROLS = {c: f"\\x{c:02x}" for c in [*range(0, 9), *range(11, 32), 127]}
_VISIBLE_CONTROLS.update({0x9B: "\\x9b"})  # the one-byte CSI


class _Stream:
    def __init__(self, sink: OutputSink, which: int, target: Any) -> None:
        self.sink = sink
        self.which = which
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.at_line_start = True
        self.retarget(target)

    def retarget(self, target: Any) -> None:
        self.prefix_lines = target is None
        self.target = target
        self.at_line_start = True

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
    """The thread that reads every sandbox's output pipes.

    An epoll set: registering or unregistering an fd takes effect at once, even
    while the thread waits, so neither needs to wake it.
    """

    def __init__(self) -> None:
        self.sel = selectors.EpollSelector()
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def register(self, sink: OutputSink) -> None:
        with self.lock:
            for fd in sink.streams:
                self.sel.register(fd, selectors.EVENT_READ, sink)
            self._start()

    def start(self) -> None:
        """Start the thread now (the first :meth:`register` does otherwise)."""
        with self.lock:
            self._start()

    def _start(self) -> None:  # caller holds the lock
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="capbridge-output", daemon=True)
            self.thread.start()

    def unregister(self, sink: OutputSink) -> None:
        with self.lock:
            for fd in sink.streams:
                self._drop(fd, sink)

    def _drop(self, fd: int, sink: OutputSink) -> None:
        # Only this sink's registration: once it was closed, the fd number may have
        # been registered again for another sandbox. Caller holds the lock.
        try:
            if self.sel.get_key(fd).data is sink:
                self.sel.unregister(fd)
        except (KeyError, ValueError):
            pass

    def _run(self) -> None:
        while True:
            try:
                events = self.sel.select()
            except OSError:
                continue
            for key, _ in events:
                sink: OutputSink = key.data
                if not sink.feed(key.fd):
                    with self.lock:
                        self._drop(key.fd, sink)


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
