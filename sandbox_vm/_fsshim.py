"""Route the sandbox's file APIs to a granted file-system capability.

Runs inside the sandbox. ``install(fs)`` takes anything with the
``host_apis.VirtualFS`` / ``MemoryFS`` interface (normally the proxy of a grant) and
replaces ``builtins.open``/``io.open``, ``os.listdir``, ``os.stat``, ``os.lstat``,
``os.scandir``, ``os.remove``/``unlink``, ``os.mkdir``, ``os.rmdir``,
``os.rename``/``replace``, ``os.readlink``, ``os.getcwd``/``chdir`` and
``os.path.exists``/``lexists``/``isfile``/``isdir``/``getsize`` so that ordinary code,
``pathlib.Path`` included (it calls these), works on the virtual tree unchanged.
``Path.touch`` is routed too. Relative paths are resolved against a virtual working
directory (``cwd``, default ``/``). File descriptors (``int`` paths), calls with
``dir_fd`` and paths under ``passthrough`` prefixes go to the original functions.

``open()`` returns real ``io`` objects: a local :class:`io.RawIOBase` over the remote
binary file, wrapped in ``io.BufferedReader``/``BufferedWriter``/``BufferedRandom``
and ``io.TextIOWrapper`` as the mode asks, so each round trip moves a whole buffer.
"""

from __future__ import annotations

import builtins
import errno
import io
import os
import pathlib
import posixpath
import stat as _stat
import threading
import warnings
from typing import Any, Iterable, Iterator

__all__ = ["install", "uninstall", "installed", "RemoteRawIO", "stat_result_from"]

#: Buffer size for ``open()`` with the default ``buffering=-1``.
DEFAULT_BUFFER = 64 * 1024
#: Bytes asked for per round trip when reading a whole file.
READALL_CHUNK = 4 * 1024 * 1024

_lock = threading.RLock()
_state: "_Shim | None" = None


def stat_result_from(t: Any) -> os.stat_result:
    """An :class:`os.stat_result` from the 10-tuple a file-system capability returns."""
    mode, ino, dev, nlink, uid, gid, size, atime, mtime, ctime = tuple(t)[:10]
    extra = {
        "st_atime": float(atime),
        "st_mtime": float(mtime),
        "st_ctime": float(ctime),
        "st_atime_ns": int(atime * 1e9),
        "st_mtime_ns": int(mtime * 1e9),
        "st_ctime_ns": int(ctime * 1e9),
        "st_blksize": 4096,
        "st_blocks": (int(size) + 511) // 512,
    }
    return os.stat_result(
        (int(mode), int(ino), int(dev), int(nlink), int(uid), int(gid), int(size),
         int(atime), int(mtime), int(ctime)),
        extra,
    )


class RemoteRawIO(io.RawIOBase):
    """An unbuffered binary file over a remote file capability.

    The position is tracked locally where it is known, so ``tell()`` usually costs no
    round trip. ``fileno()`` raises :class:`io.UnsupportedOperation`.
    """

    def __init__(self, cap: Any, name: Any, mode: str) -> None:
        super().__init__()
        self._cap = cap
        self.name = name
        self.mode = mode
        self._readable = "r" in mode or "+" in mode
        self._writable = mode[0] in "wax" or "+" in mode
        self._append = mode[0] == "a"
        self._pos: int | None = None if self._append else 0

    def readable(self) -> bool:
        self._checkClosed()
        return self._readable

    def writable(self) -> bool:
        self._checkClosed()
        return self._writable

    def seekable(self) -> bool:
        self._checkClosed()
        return True

    def readinto(self, b: Any) -> int:
        self._checkClosed()
        view = memoryview(b).cast("B")
        data = self._cap.read(len(view))
        n = len(data)
        view[:n] = data
        if self._pos is not None:
            self._pos += n
        return n

    def readall(self) -> bytes:
        self._checkClosed()
        chunks = []
        while True:
            data = self._cap.read(READALL_CHUNK)
            if not data:
                break
            chunks.append(data)
            if self._pos is not None:
                self._pos += len(data)
        return b"".join(chunks)

    def write(self, b: Any) -> int:
        self._checkClosed()
        data = bytes(memoryview(b).cast("B"))
        n = self._cap.write(data)
        if self._append:
            self._pos = None
        elif self._pos is not None:
            self._pos += n
        return n

    def seek(self, offset: int, whence: int = 0) -> int:
        self._checkClosed()
        self._pos = self._cap.seek(offset, whence)
        return self._pos

    def tell(self) -> int:
        self._checkClosed()
        if self._pos is None:
            self._pos = self._cap.tell()
        return self._pos

    def truncate(self, size: int | None = None) -> int:
        self._checkClosed()
        if size is None:
            size = self.tell()
        return self._cap.truncate(size)

    def close(self) -> None:
        if self.closed:
            return
        try:
            super().close()
        finally:
            try:
                self._cap.close()
            except Exception:
                pass

    def isatty(self) -> bool:
        self._checkClosed()
        return False

    def __repr__(self) -> str:
        return f"<RemoteRawIO name={self.name!r} mode={self.mode!r}>"


class _DirEntry:
    """What ``os.scandir`` yields for a virtual directory (like :class:`os.DirEntry`)."""

    __slots__ = ("name", "path", "_is_dir", "_is_file", "_stat")

    def __init__(self, name: Any, path: Any, is_dir: bool, is_file: bool, st: Any) -> None:
        self.name = name
        self.path = path
        self._is_dir = is_dir
        self._is_file = is_file
        self._stat = st

    def is_dir(self, *, follow_symlinks: bool = True) -> bool:
        return self._is_dir

    def is_file(self, *, follow_symlinks: bool = True) -> bool:
        return self._is_file

    def is_symlink(self) -> bool:
        return _stat.S_ISLNK(self._stat[0])

    def is_junction(self) -> bool:
        return False

    def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
        return stat_result_from(self._stat)

    def inode(self) -> int:
        return int(self._stat[1])

    def __fspath__(self) -> Any:
        return self.path

    def __repr__(self) -> str:
        return f"<DirEntry {self.name!r}>"


class _ScandirIterator:
    def __init__(self, entries: list[_DirEntry]) -> None:
        self._it: Iterator[_DirEntry] = iter(entries)

    def __iter__(self) -> "_ScandirIterator":
        return self

    def __next__(self) -> _DirEntry:
        return next(self._it)

    def close(self) -> None:
        self._it = iter(())

    def __enter__(self) -> "_ScandirIterator":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


_MODE_CHARS = set("rwaxbt+")


class _Shim:
    def __init__(self, fs: Any, cwd: str, passthrough: Iterable[str]) -> None:
        self.fs = fs
        self.cwd = posixpath.normpath("/" + cwd.lstrip("/")) if cwd else "/"
        self.passthrough = tuple(posixpath.normpath(p) for p in passthrough)
        self.saved: list[tuple[Any, str, Any]] = []
        self.orig: dict[str, Any] = {}

    # ------------------------------------------------------------------ routing

    def route(self, path: Any) -> tuple[str, bool] | None:
        """``(virtual path, was_bytes)``, or None if ``path`` stays with the original."""
        if isinstance(path, int):
            return None
        path = os.fspath(path)
        is_bytes = isinstance(path, bytes)
        text = os.fsdecode(path) if is_bytes else path
        if not isinstance(text, str):
            raise TypeError(f"expected str, bytes or os.PathLike object, not {type(path).__name__}")
        if "\x00" in text:
            raise ValueError("embedded null byte")
        full = text if text.startswith("/") else posixpath.join(self.cwd, text)
        if self.passthrough:
            norm = posixpath.normpath(full)
            for prefix in self.passthrough:
                if norm == prefix or norm.startswith(prefix.rstrip("/") + "/"):
                    return None
        return full, is_bytes

    # ------------------------------------------------------------------ open

    def open(
        self,
        file: Any,
        mode: str = "r",
        buffering: int = -1,
        encoding: str | None = None,
        errors: str | None = None,
        newline: str | None = None,
        closefd: bool = True,
        opener: Any = None,
    ) -> Any:
        routed = self.route(file)
        if routed is None:
            return self.orig["open"](file, mode, buffering, encoding, errors, newline, closefd, opener)
        if not isinstance(mode, str):
            raise TypeError(f"open() argument 'mode' must be str, not {type(mode).__name__}")
        if not isinstance(buffering, int):
            raise TypeError("an integer is required for buffering")
        chars = set(mode)
        if not chars <= _MODE_CHARS or len(chars) != len(mode):
            raise ValueError(f"invalid mode: '{mode}'")
        kinds = chars & set("rwax")
        text, binary = "t" in chars, "b" in chars
        if len(kinds) != 1:
            raise ValueError("must have exactly one of create/read/write/append mode")
        if text and binary:
            raise ValueError("can't have text and binary mode at once")
        if binary:
            for arg, label in ((encoding, "an encoding"), (errors, "an errors"), (newline, "a newline")):
                if arg is not None:
                    raise ValueError(f"binary mode doesn't take {label} argument")
            if buffering == 1:
                warnings.warn(
                    "line buffering (buffering=1) isn't supported in binary mode, "
                    "the default buffer size will be used",
                    RuntimeWarning,
                    2,
                )
        if not closefd:
            raise ValueError("Cannot use closefd=False with file name")
        if opener is not None:
            raise ValueError("opener is not supported for virtual files")
        if newline not in (None, "", "\n", "\r", "\r\n"):
            raise ValueError(f"illegal newline value: {newline!r}")
        if buffering == 0 and not binary:
            raise ValueError("can't have unbuffered text I/O")
        kind = kinds.pop()
        updating = "+" in chars
        capmode = kind + ("+" if updating else "") + "b"
        vpath, _ = routed
        cap = self.fs.open(vpath, capmode)
        raw = RemoteRawIO(cap, os.fspath(file), capmode)
        try:
            line_buffering = buffering == 1 and not binary
            size = DEFAULT_BUFFER if buffering in (-1, 1) or buffering < 0 else buffering
            if buffering == 0:
                return raw
            if updating:
                buf: Any = io.BufferedRandom(raw, size)
            elif kind == "r":
                buf = io.BufferedReader(raw, size)
            else:
                buf = io.BufferedWriter(raw, size)
            if binary:
                return buf
            wrapper = io.TextIOWrapper(buf, encoding, errors, newline, line_buffering)
            wrapper.mode = mode  # type: ignore[misc]
            wrapper._CHUNK_SIZE = size  # type: ignore[attr-defined]  # one raw read per chunk
            return wrapper
        except BaseException:
            raw.close()
            raise

    # ------------------------------------------------------------------ os functions

    def listdir(self, path: Any = ".") -> list[Any]:
        routed = self.route(path)
        if routed is None:
            return self.orig["listdir"](path)
        vpath, is_bytes = routed
        names = self.fs.listdir(vpath)
        return [os.fsencode(n) for n in names] if is_bytes else list(names)

    def scandir(self, path: Any = ".") -> Any:
        routed = self.route(path)
        if routed is None:
            return self.orig["scandir"](path)
        vpath, is_bytes = routed
        given = os.fspath(path)
        entries = []
        for name, is_dir, is_file, st in self.fs.scandir(vpath):
            ename: Any = os.fsencode(name) if is_bytes else name
            entries.append(_DirEntry(ename, posixpath.join(given, ename), is_dir, is_file, st))
        return _ScandirIterator(entries)

    def stat(self, path: Any, *, dir_fd: Any = None, follow_symlinks: bool = True) -> os.stat_result:
        routed = None if dir_fd is not None else self.route(path)
        if routed is None:
            return self.orig["stat"](path, dir_fd=dir_fd, follow_symlinks=follow_symlinks)
        return stat_result_from(self.fs.stat(routed[0]))

    def lstat(self, path: Any, *, dir_fd: Any = None) -> os.stat_result:
        routed = None if dir_fd is not None else self.route(path)
        if routed is None:
            return self.orig["lstat"](path, dir_fd=dir_fd)
        return stat_result_from(self.fs.stat(routed[0]))

    def _simple(self, name: str, method: str) -> Any:
        def fn(path: Any, *, dir_fd: Any = None) -> None:
            routed = None if dir_fd is not None else self.route(path)
            if routed is None:
                return self.orig[name](path, dir_fd=dir_fd)
            getattr(self.fs, method)(routed[0])

        fn.__name__ = name
        return fn

    def mkdir(self, path: Any, mode: int = 0o777, *, dir_fd: Any = None) -> None:
        routed = None if dir_fd is not None else self.route(path)
        if routed is None:
            return self.orig["mkdir"](path, mode, dir_fd=dir_fd)
        self.fs.mkdir(routed[0], mode)

    def _rename(self, name: str) -> Any:
        def fn(src: Any, dst: Any, *, src_dir_fd: Any = None, dst_dir_fd: Any = None) -> None:
            rs = self.route(src) if src_dir_fd is None else None
            rd = self.route(dst) if dst_dir_fd is None else None
            if rs is None and rd is None:
                return self.orig[name](src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
            if rs is None or rd is None:
                raise OSError(errno.EXDEV, "Invalid cross-device link", os.fspath(src))
            self.fs.rename(rs[0], rd[0])

        fn.__name__ = name
        return fn

    def readlink(self, path: Any, *, dir_fd: Any = None) -> Any:
        routed = None if dir_fd is not None else self.route(path)
        if routed is None:
            return self.orig["readlink"](path, dir_fd=dir_fd)
        self.fs.stat(routed[0])  # FileNotFoundError if missing
        raise OSError(errno.EINVAL, "Invalid argument (links are not followed)", os.fspath(path))

    def getcwd(self) -> str:
        return self.cwd

    def getcwdb(self) -> bytes:
        return os.fsencode(self.cwd)

    def chdir(self, path: Any) -> None:
        routed = self.route(path)
        if routed is None:
            raise OSError(errno.EACCES, "Permission denied", os.fspath(path))
        st = self.fs.stat(routed[0])
        if not _stat.S_ISDIR(st[0]):
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory", os.fspath(path))
        self.cwd = posixpath.normpath(routed[0])
        if self.cwd.startswith("//"):
            self.cwd = "/" + self.cwd.lstrip("/")

    # ------------------------------------------------------------------ os.path

    def _query(self, name: str, method: str) -> Any:
        def fn(path: Any) -> bool:
            try:
                routed = self.route(path)
            except (TypeError, ValueError):
                return self.orig[name](path)
            if routed is None:
                return self.orig[name](path)
            try:
                return bool(getattr(self.fs, method)(routed[0]))
            except (OSError, ValueError):
                return False

        fn.__name__ = name
        return fn

    def getsize(self, path: Any) -> int:
        routed = self.route(path)
        if routed is None:
            return self.orig["getsize"](path)
        return int(self.fs.getsize(routed[0]))

    def touch(self, path_obj: pathlib.Path, mode: int = 0o666, exist_ok: bool = True) -> None:
        routed = self.route(path_obj)
        if routed is None:
            return self.orig["touch"](path_obj, mode, exist_ok)
        if self.fs.exists(routed[0]):
            if not exist_ok:
                raise FileExistsError(errno.EEXIST, "File exists", str(path_obj))
            return
        self.fs.open(routed[0], "ab").close()

    # ------------------------------------------------------------------ patching

    def patch(self, obj: Any, attr: str, key: str, new: Any) -> None:
        self.saved.append((obj, attr, getattr(obj, attr)))
        self.orig.setdefault(key, getattr(obj, attr))
        setattr(obj, attr, new)

    def apply(self) -> None:
        self.patch(builtins, "open", "open", self.open)
        self.patch(io, "open", "open", self.open)
        self.patch(os, "listdir", "listdir", self.listdir)
        self.patch(os, "scandir", "scandir", self.scandir)
        self.patch(os, "stat", "stat", self.stat)
        self.patch(os, "lstat", "lstat", self.lstat)
        self.patch(os, "remove", "remove", self._simple("remove", "remove"))
        self.patch(os, "unlink", "unlink", self._simple("unlink", "remove"))
        self.patch(os, "rmdir", "rmdir", self._simple("rmdir", "rmdir"))
        self.patch(os, "mkdir", "mkdir", self.mkdir)
        self.patch(os, "rename", "rename", self._rename("rename"))
        self.patch(os, "replace", "replace", self._rename("replace"))
        self.patch(os, "readlink", "readlink", self.readlink)
        self.patch(os, "getcwd", "getcwd", self.getcwd)
        self.patch(os, "getcwdb", "getcwdb", self.getcwdb)
        self.patch(os, "chdir", "chdir", self.chdir)
        for name, method in (("exists", "exists"), ("lexists", "exists"), ("isfile", "isfile"), ("isdir", "isdir")):
            self.patch(posixpath, name, name, self._query(name, method))
        self.patch(posixpath, "getsize", "getsize", self.getsize)
        self.patch(pathlib.Path, "touch", "touch", _touch_method(self))

    def restore(self) -> None:
        for obj, attr, old in reversed(self.saved):
            setattr(obj, attr, old)
        self.saved.clear()


def _touch_method(shim: _Shim) -> Any:
    def touch(self: pathlib.Path, mode: int = 0o666, exist_ok: bool = True) -> None:
        shim.touch(self, mode, exist_ok)

    return touch


def install(fs: Any, *, cwd: str = "/", passthrough: Iterable[str] = ()) -> None:
    """Route the file APIs to ``fs`` (a VirtualFS/MemoryFS capability or proxy).

    ``cwd`` is the virtual working directory for relative paths; paths under any of
    the ``passthrough`` prefixes keep using the real functions. Raises
    ``RuntimeError`` if already installed.
    """
    global _state
    with _lock:
        if _state is not None:
            raise RuntimeError("the file-system shim is already installed; uninstall() first")
        shim = _Shim(fs, cwd, passthrough)
        try:
            shim.apply()
        except BaseException:
            shim.restore()
            raise
        _state = shim


def uninstall() -> None:
    """Put every patched function back; harmless when not installed."""
    global _state
    with _lock:
        if _state is not None:
            _state.restore()
            _state = None


def installed() -> bool:
    """True while the shim is installed."""
    return _state is not None
