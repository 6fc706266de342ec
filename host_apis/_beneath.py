"""Opening a path strictly beneath a directory file descriptor, following no symlinks.

With ``openat2(2)`` (Linux 5.6+) the kernel does the whole resolution with
``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS``. Elsewhere the path is
walked one component at a time with ``O_PATH | O_DIRECTORY | O_NOFOLLOW`` directory
descriptors and the last component is opened with ``O_NOFOLLOW``. Either way a
symbolic link anywhere in the path fails (``ELOOP``/``ENOTDIR``), and ``..`` never
reaches the kernel because virtual paths are normalised first.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

__all__ = ["open_beneath", "openat2_available", "use_openat2"]

_SYS_OPENAT2 = 437
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08

_RESOLVE = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS
_O_PATH = getattr(os, "O_PATH", 0)
_DIR_FLAGS = (_O_PATH or os.O_RDONLY) | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _syscall = _libc.syscall
    _syscall.restype = ctypes.c_long
except (OSError, AttributeError):  # pragma: no cover - non-glibc platforms
    _syscall = None


def _openat2(dirfd: int, path: str, flags: int, mode: int) -> int:
    how = struct.pack("QQQ", flags, mode if flags & os.O_CREAT else 0, _RESOLVE)
    buf = ctypes.create_string_buffer(how, len(how))
    encoded = os.fsencode(path)
    while True:
        fd = _syscall(
            ctypes.c_long(_SYS_OPENAT2),
            ctypes.c_int(dirfd),
            ctypes.c_char_p(encoded),
            buf,
            ctypes.c_size_t(len(how)),
        )
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        if err == errno.EINTR:
            continue
        if err == errno.EAGAIN:  # a concurrent rename raced the lookup; try again
            continue
        raise OSError(err, os.strerror(err))


def _probe() -> bool:
    if _syscall is None or not hasattr(os, "O_PATH"):
        return False
    try:
        root = os.open("/", _DIR_FLAGS)
    except OSError:
        return False
    try:
        fd = _openat2(root, ".", _DIR_FLAGS, 0)
    except OSError:
        return False
    finally:
        os.close(root)
    os.close(fd)
    return True


_AVAILABLE = _probe()
_use = _AVAILABLE


def openat2_available() -> bool:
    """True if this kernel offers ``openat2`` with ``RESOLVE_BENEATH``."""
    return _AVAILABLE


def use_openat2(enabled: bool) -> bool:
    """Switch between ``openat2`` and the component walk (for tests); returns the old setting."""
    global _use
    old = _use
    _use = bool(enabled) and _AVAILABLE
    return old


def _walk_open(rootfd: int, parts: list[str], flags: int, mode: int) -> int:
    fd = rootfd
    try:
        for part in parts[:-1]:
            nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            if fd != rootfd:
                os.close(fd)
            fd = nxt
        return os.open(parts[-1], flags | os.O_NOFOLLOW, mode, dir_fd=fd)
    finally:
        if fd != rootfd:
            os.close(fd)


def open_beneath(rootfd: int, parts: list[str], flags: int, mode: int = 0o666) -> int:
    """Open ``parts`` (normalised components, no ``.``/``..``) beneath ``rootfd``.

    ``flags`` always gains ``O_CLOEXEC | O_NOFOLLOW``. An empty ``parts`` opens the
    directory itself. Raises ``OSError`` (``ELOOP``/``ENOTDIR`` for symbolic links,
    ``EXDEV`` if the kernel saw an escape).
    """
    for part in parts:
        if part in ("", ".", "..") or "/" in part or "\x00" in part:
            raise ValueError(f"bad path component {part!r}")
    flags |= os.O_CLOEXEC | os.O_NOFOLLOW
    if not parts:
        return os.open(".", flags & ~(os.O_CREAT | os.O_EXCL | os.O_TRUNC), dir_fd=rootfd)
    if _use:
        return _openat2(rootfd, "/".join(parts), flags, mode)
    return _walk_open(rootfd, parts, flags, mode)


def open_parent(rootfd: int, parts: list[str]) -> int:
    """A directory descriptor (``O_PATH``) for the parent of ``parts`` beneath ``rootfd``."""
    return open_beneath(rootfd, parts[:-1], _DIR_FLAGS)


DIR_FLAGS = _DIR_FLAGS
