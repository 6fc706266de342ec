"""The file capability interface shared by :class:`VirtualFS` and :class:`MemoryFS`.

File capabilities are always binary. Inside the sandbox, the ``open()`` installed by
``sandbox_vm._fsshim`` wraps one in ``io.BufferedReader``/``TextIOWrapper`` locally, so
one round trip moves a buffer rather than a line.
"""

from __future__ import annotations

import errno
import threading
from typing import Any, Iterator

from capbridge import expose

from ._common import MAX_READ, OpenMode, check_read_size, os_error, too_big

__all__ = ["FileBase"]

_CHUNK = 64 * 1024


class FileBase:
    """A binary file opened through a file-system capability.

    Methods follow :class:`io.RawIOBase` except that ``read(n)`` returns at most
    ``MAX_READ`` (16 MiB) bytes and ``read()`` to the end refuses files with more than
    that left (read in chunks instead).
    """

    def __init__(self, name: str, mode: OpenMode) -> None:
        self._name = name
        self._mode = mode
        self._closed = False
        self._lock = threading.RLock()

    # --- primitives for subclasses
    def _read(self, n: int) -> bytes:  # n >= 0
        raise NotImplementedError

    def _write(self, data: bytes) -> int:
        raise NotImplementedError

    def _seek(self, offset: int, whence: int) -> int:
        raise NotImplementedError

    def _size(self) -> int:
        raise NotImplementedError

    def _truncate(self, size: int) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    # --- checks
    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("I/O operation on closed file.")

    def _check_readable(self) -> None:
        self._check_open()
        if not self._mode.reading:
            raise OSError(errno.EBADF, "File not open for reading", self._name)

    def _check_writable(self) -> None:
        self._check_open()
        if not self._mode.writing:
            raise OSError(errno.EBADF, "File not open for writing", self._name)

    # --- exposed interface
    @expose
    @property
    def name(self) -> str:
        """The virtual path the file was opened with."""
        return self._name

    @expose
    @property
    def mode(self) -> str:
        """The binary mode, e.g. ``"rb"`` or ``"r+b"``."""
        return self._mode.mode

    @expose
    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    @expose
    def readable(self) -> bool:
        """True if the file was opened for reading."""
        self._check_open()
        return self._mode.reading

    @expose
    def writable(self) -> bool:
        """True if the file was opened for writing."""
        self._check_open()
        return self._mode.writing

    @expose
    def seekable(self) -> bool:
        """Always true: only regular files are opened."""
        self._check_open()
        return True

    @expose
    def read(self, n: int | None = -1) -> bytes:
        """Read up to ``n`` bytes (at most 16 MiB per call); ``-1`` reads to the end."""
        size = check_read_size(n)
        with self._lock:
            self._check_readable()
            if size >= 0:
                return self._read(size)
            start = self._seek(0, 1)
            data = self._read(MAX_READ + 1)
            if len(data) > MAX_READ:
                self._seek(start, 0)
                raise too_big(self._name)
            return data

    @expose
    def readline(self, limit: int | None = -1) -> bytes:
        """Read one line (up to and including ``b"\\n"``), at most ``limit`` bytes."""
        lim = check_read_size(limit)
        if lim < 0:
            lim = MAX_READ
        with self._lock:
            self._check_readable()
            start = self._seek(0, 1)
            out = bytearray()
            while len(out) < lim:
                chunk = self._read(min(_CHUNK, lim - len(out)))
                if not chunk:
                    break
                i = chunk.find(b"\n")
                if i >= 0:
                    out += chunk[: i + 1]
                    break
                out += chunk
            self._seek(start + len(out), 0)
            return bytes(out)

    @expose
    def readlines(self, hint: int | None = -1) -> list[bytes]:
        """Read lines until EOF or until ``hint`` bytes were read (16 MiB at most)."""
        limit = MAX_READ if hint is None or hint <= 0 else min(hint, MAX_READ)
        with self._lock:
            self._check_readable()
            start = self._seek(0, 1)
            lines: list[bytes] = []
            total = 0
            while True:
                line = self.readline()
                if not line:
                    break
                lines.append(line)
                total += len(line)
                if total >= limit:
                    if (hint is None or hint <= 0) and self._read(1):
                        self._seek(start, 0)
                        raise too_big(self._name)
                    break
            return lines

    @expose
    def write(self, data: bytes | bytearray) -> int:
        """Write all of ``data``; returns its length."""
        if isinstance(data, memoryview):
            data = data.tobytes()
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"a bytes-like object is required, not '{type(data).__name__}'")
        with self._lock:
            self._check_writable()
            return self._write(bytes(data))

    @expose
    def seek(self, offset: int, whence: int = 0) -> int:
        """Move the position (``whence`` 0, 1 or 2); returns the new position."""
        if not isinstance(offset, int) or not isinstance(whence, int):
            raise TypeError("seek() takes integers")
        if whence not in (0, 1, 2):
            raise ValueError(f"invalid whence ({whence}, should be 0, 1 or 2)")
        with self._lock:
            self._check_open()
            return self._seek(offset, whence)

    @expose
    def tell(self) -> int:
        """The current position."""
        with self._lock:
            self._check_open()
            return self._seek(0, 1)

    @expose
    def truncate(self, size: int | None = None) -> int:
        """Resize the file to ``size`` (default: the current position); returns it."""
        with self._lock:
            self._check_writable()
            if size is None:
                size = self._seek(0, 1)
            if not isinstance(size, int) or size < 0:
                raise os_error(errno.EINVAL, self._name, "invalid size")
            self._truncate(size)
            return size

    @expose
    def flush(self) -> None:
        """Nothing is buffered on the host side; checks the file is open."""
        self._check_open()

    @expose
    def close(self) -> None:
        """Close the file; closing twice is harmless."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._close()

    @expose
    def __iter__(self) -> Iterator[bytes]:
        self._check_readable()
        return self

    @expose
    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    @expose
    def __enter__(self) -> "FileBase":
        self._check_open()
        return self

    @expose
    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<{type(self).__name__} {self._name!r} mode={self._mode.mode!r}{state}>"
