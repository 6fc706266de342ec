"""Pieces shared by the file-system capabilities: virtual path handling, open modes,
quotas, errors and the stat tuple.

Virtual paths are absolute POSIX ``str`` paths. They are normalised lexically
(``.``, ``..`` and repeated slashes) before anything else looks at them; a path whose
``..`` would climb above ``/`` is refused with :class:`PermissionError`.
"""

from __future__ import annotations

import errno
import os
import stat as _stat
import threading
from typing import NamedTuple, NoReturn

from capbridge import expose

__all__ = [
    "MAX_READ",
    "MAX_PATH",
    "MAX_NAME",
    "normalize",
    "split_parts",
    "OpenMode",
    "parse_mode",
    "Quota",
    "os_error",
    "rethrow",
    "StatTuple",
]

#: Largest number of bytes one ``read`` call returns; larger requests are shortened.
MAX_READ = 16 * 1024 * 1024
#: Longest virtual path accepted, in UTF-8 bytes.
MAX_PATH = 4096
#: Longest single path component accepted, in UTF-8 bytes.
MAX_NAME = 255

#: ``stat()`` results: a plain tuple in :class:`os.stat_result` order
#: ``(st_mode, st_ino, st_dev, st_nlink, st_uid, st_gid, st_size, st_atime, st_mtime,
#: st_ctime)`` with float times, so ``os.stat_result(t)`` rebuilds it.
StatTuple = tuple[int, int, int, int, int, int, int, float, float, float]


def os_error(code: int, path: str, message: str | None = None) -> OSError:
    """An ``OSError`` of the subclass ``code`` maps to, naming the virtual ``path``."""
    if code == errno.EROFS or code == errno.EACCES or code == errno.EPERM:
        return PermissionError(code, message or os.strerror(code), path)
    return OSError(code, message or os.strerror(code), path)


def rethrow(exc: OSError, path: str) -> NoReturn:
    """Re-raise an ``OSError`` from a host call with the virtual path and no host path."""
    code = exc.errno if exc.errno is not None else errno.EIO
    raise os_error(code, path) from None


def normalize(path: str) -> str:
    """Lexically normalise a virtual path; it must be absolute.

    Raises ``TypeError`` for non-``str``, ``ValueError`` for NUL bytes or relative
    paths, ``OSError(ENAMETOOLONG)`` for over-long paths and ``PermissionError`` when
    ``..`` would climb above the virtual root.
    """
    if not isinstance(path, str):
        raise TypeError(f"virtual paths are str, not {type(path).__name__}")
    if "\x00" in path:
        raise ValueError("embedded null byte")
    try:
        encoded_len = len(path.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"path is not valid UTF-8: {path!r}") from None
    if encoded_len > MAX_PATH:
        raise os_error(errno.ENAMETOOLONG, path)
    if not path.startswith("/"):
        raise ValueError(f"virtual paths are absolute: {path!r}")
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise os_error(errno.EACCES, path, "path leaves the virtual root")
            parts.pop()
            continue
        if len(part.encode("utf-8")) > MAX_NAME:
            raise os_error(errno.ENAMETOOLONG, path)
        parts.append(part)
    return "/" + "/".join(parts)


def split_parts(normalized: str) -> list[str]:
    """The components of a normalised virtual path (``[]`` for ``/``)."""
    return [p for p in normalized.split("/") if p]


class OpenMode(NamedTuple):
    """A parsed binary open mode."""

    mode: str  # canonical form, e.g. "rb", "r+b", "ab", "wb", "xb"
    reading: bool
    writing: bool
    create: bool
    exclusive: bool
    truncate: bool
    append: bool


def parse_mode(mode: str) -> OpenMode:
    """Parse a binary file mode (``r``/``w``/``a``/``x``, optional ``+``, ``b``).

    A mode without ``b`` is accepted and treated as binary; ``t`` is refused, since
    file capabilities move bytes (the sandbox's ``open()`` adds text decoding).
    """
    if not isinstance(mode, str):
        raise TypeError(f"mode must be str, not {type(mode).__name__}")
    chars = set(mode)
    if len(chars) != len(mode) or not chars <= set("rwaxb+"):
        if "t" in chars:
            raise ValueError("file capabilities are binary; open text through the sandbox's open()")
        raise ValueError(f"invalid mode: {mode!r}")
    kinds = chars & set("rwax")
    if len(kinds) != 1:
        raise ValueError(f"mode must have exactly one of r, w, a, x: {mode!r}")
    kind = kinds.pop()
    plus = "+" in chars
    return OpenMode(
        mode=kind + ("+" if plus else "") + "b",
        reading=kind == "r" or plus,
        writing=kind != "r" or plus,
        create=kind in "wax",
        exclusive=kind == "x",
        truncate=kind == "w",
        append=kind == "a",
    )


class Quota:
    """Counts bytes written and files created against optional limits.

    Nothing is credited back: ``max_bytes`` bounds the bytes ever written (plus what
    files grew by otherwise: the hole of a write past the end, ``truncate``),
    ``max_files`` the files and directories ever created.
    """

    def __init__(self, max_bytes: int | None, max_files: int | None) -> None:
        for name, value in (("max_bytes", max_bytes), ("max_files", max_files)):
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be a non-negative int or None")
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.bytes_written = 0
        self.files_created = 0
        self._lock = threading.Lock()

    def charge_bytes(self, n: int, path: str) -> None:
        if n <= 0:
            return
        with self._lock:
            if self.max_bytes is not None and self.bytes_written + n > self.max_bytes:
                raise os_error(errno.EDQUOT, path, "Disk quota exceeded (bytes)")
            self.bytes_written += n

    def charge_file(self, path: str) -> None:
        with self._lock:
            if self.max_files is not None and self.files_created + 1 > self.max_files:
                raise os_error(errno.EDQUOT, path, "Disk quota exceeded (files)")
            self.files_created += 1

    def refund_file(self) -> None:
        with self._lock:
            self.files_created = max(0, self.files_created - 1)

    def usage(self) -> dict[str, int | None]:
        with self._lock:
            return {
                "bytes_written": self.bytes_written,
                "max_bytes": self.max_bytes,
                "files_created": self.files_created,
                "max_files": self.max_files,
            }


def is_dir_mode(mode: int) -> bool:
    return _stat.S_ISDIR(mode)


def is_reg_mode(mode: int) -> bool:
    return _stat.S_ISREG(mode)


def check_read_size(n: int | None) -> int:
    """Validate ``read``'s argument; return -1 for "to the end" else a capped size."""
    if n is None:
        return -1
    if not isinstance(n, int) or isinstance(n, bool):
        raise TypeError(f"read size must be int or None, not {type(n).__name__}")
    if n < 0:
        return -1
    return min(n, MAX_READ)


def too_big(path: str) -> OSError:
    return OSError(
        errno.EFBIG,
        f"more than {MAX_READ} bytes left; read in chunks with read(n)",
        path,
    )


class StatQueries:
    """``exists``/``isdir``/``isfile``/``getsize`` for a file system with ``stat``."""

    def stat(self, path: str) -> StatTuple:  # pragma: no cover - provided by the subclass
        raise NotImplementedError

    @expose
    def exists(self, path: str) -> bool:
        """True if ``path`` names a file or directory."""
        try:
            self.stat(path)
        except (OSError, ValueError):
            return False
        return True

    @expose
    def isdir(self, path: str) -> bool:
        """True if ``path`` is a directory."""
        try:
            return _stat.S_ISDIR(self.stat(path)[0])
        except (OSError, ValueError):
            return False

    @expose
    def isfile(self, path: str) -> bool:
        """True if ``path`` is a regular file."""
        try:
            return _stat.S_ISREG(self.stat(path)[0])
        except (OSError, ValueError):
            return False

    @expose
    def getsize(self, path: str) -> int:
        """The size of ``path`` in bytes."""
        return self.stat(path)[6]
