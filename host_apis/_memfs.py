"""``MemoryFS``: the :class:`VirtualFS` interface over an in-memory tree."""

from __future__ import annotations

import errno
import itertools
import stat as _stat
import threading
import time
from typing import Mapping

from capbridge import expose

from ._common import OpenMode, StatQueries, StatTuple, normalize, os_error, parse_mode, split_parts
from ._filebase import FileBase

__all__ = ["MemoryFS", "MemoryFile"]

_inodes = itertools.count(2)


class _Node:
    __slots__ = ("ino", "mtime", "ctime", "atime", "perm")

    def __init__(self, perm: int) -> None:
        self.ino = next(_inodes)
        self.mtime = self.ctime = self.atime = time.time()
        self.perm = perm

    def touch(self) -> None:
        self.mtime = self.ctime = time.time()


class _Dir(_Node):
    __slots__ = ("children",)

    def __init__(self, perm: int = 0o755) -> None:
        super().__init__(perm)
        self.children: dict[str, _Node] = {}


class _File(_Node):
    __slots__ = ("data",)

    def __init__(self, data: bytes = b"", perm: int = 0o644) -> None:
        super().__init__(perm)
        self.data = bytearray(data)


class MemoryFile(FileBase):
    """A file of a :class:`MemoryFS` (binary; see :class:`FileBase`)."""

    def __init__(self, fs: "MemoryFS", node: _File, name: str, mode: OpenMode) -> None:
        super().__init__(name, mode)
        self._fs = fs
        self._node = node
        self._pos = len(node.data) if mode.append else 0

    def _read(self, n: int) -> bytes:
        with self._fs._lock:
            data = bytes(self._node.data[self._pos : self._pos + n])
            self._pos += len(data)
            return data

    def _write(self, data: bytes) -> int:
        with self._fs._lock:
            node = self._node
            if self._mode.append:
                self._pos = len(node.data)
            end = self._pos + len(data)
            # Only growth is charged (a hole past the end included); overwriting
            # inside the file changes nothing the tree holds.
            self._fs._charge(max(0, end - len(node.data)), self._name)
            if self._pos > len(node.data):
                node.data.extend(bytes(self._pos - len(node.data)))
            node.data[self._pos : end] = data
            self._pos = end
            node.touch()
            return len(data)

    def _seek(self, offset: int, whence: int) -> int:
        with self._fs._lock:
            base = (0, self._pos, len(self._node.data))[whence]
            pos = base + offset
            if pos < 0:
                raise os_error(errno.EINVAL, self._name, "Invalid argument")
            self._pos = pos
            return pos

    def _size(self) -> int:
        return len(self._node.data)

    def _truncate(self, size: int) -> None:
        with self._fs._lock:
            node = self._node
            self._fs._charge(size - len(node.data), self._name)
            if size < len(node.data):
                del node.data[size:]
            else:
                node.data.extend(bytes(size - len(node.data)))
            node.touch()

    def _close(self) -> None:
        pass


class MemoryFS(StatQueries):
    """An in-memory file tree with the :class:`VirtualFS` interface.

    ``files`` seeds it: ``{"/data/a.txt": "text", "/bin.dat": b"..."}`` (parents are
    created; ``str`` is stored as UTF-8). Quotas bound what the tree holds *now*:
    ``max_bytes`` the total size of all files and ``max_files`` the number of files and
    directories (``None`` lifts a limit; exceeding raises ``OSError(EDQUOT)``), so
    removing frees room. ``read_only=True`` refuses every change from the sandbox.
    """

    #: Tells the sandbox to route open() and os functions to this grant (as ``fs``).
    capbridge_file_system = True

    def __init__(
        self,
        files: Mapping[str, bytes | str] | None = None,
        *,
        max_bytes: int | None = 64 * 1024 * 1024,
        max_files: int | None = 10_000,
        read_only: bool = False,
    ) -> None:
        for name, value in (("max_bytes", max_bytes), ("max_files", max_files)):
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be a non-negative int or None")
        self._root = _Dir()
        self._lock = threading.RLock()
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.read_only = read_only
        self._bytes = 0
        self._files = 0
        for path, content in (files or {}).items():
            self.write_bytes(path, content.encode() if isinstance(content, str) else content)

    # ------------------------------------------------------------------ host only

    def write_bytes(self, path: str, data: bytes, *, parents: bool = True) -> None:
        """Host-side: create or replace a file (quotas apply, ``read_only`` does not)."""
        norm = normalize(path)
        parts = split_parts(norm)
        if not parts:
            raise os_error(errno.EISDIR, norm)
        with self._lock:
            d = self._root
            for i, part in enumerate(parts[:-1]):
                nxt = d.children.get(part)
                if nxt is None and parents:
                    self._charge_file("/" + "/".join(parts[: i + 1]))
                    nxt = d.children[part] = _Dir()
                if not isinstance(nxt, _Dir):
                    raise os_error(errno.ENOTDIR if nxt else errno.ENOENT, norm)
                d = nxt
            node = d.children.get(parts[-1])
            if isinstance(node, _Dir):
                raise os_error(errno.EISDIR, norm)
            if node is None:
                self._charge_file(norm)
                node = d.children[parts[-1]] = _File()
            self._charge(len(data) - len(node.data), norm)
            node.data[:] = data
            node.touch()

    def read_bytes(self, path: str) -> bytes:
        """Host-side: the content of a file."""
        norm = normalize(path)
        with self._lock:
            node = self._lookup(norm)
            if isinstance(node, _Dir):
                raise os_error(errno.EISDIR, norm)
            assert isinstance(node, _File)
            return bytes(node.data)

    def __repr__(self) -> str:
        return f"<MemoryFS {self._files} nodes, {self._bytes} bytes>"

    # ------------------------------------------------------------------ internals

    def _charge(self, n: int, path: str) -> None:
        if n > 0 and self.max_bytes is not None and self._bytes + n > self.max_bytes:
            raise os_error(errno.EDQUOT, path, "Disk quota exceeded (bytes)")
        self._bytes = max(0, self._bytes + n)

    def _charge_file(self, path: str) -> None:
        if self.max_files is not None and self._files + 1 > self.max_files:
            raise os_error(errno.EDQUOT, path, "Disk quota exceeded (files)")
        self._files += 1

    def _lookup(self, norm: str) -> _Node:
        node: _Node = self._root
        for part in split_parts(norm):
            if not isinstance(node, _Dir):
                raise os_error(errno.ENOTDIR, norm)
            child = node.children.get(part)
            if child is None:
                raise os_error(errno.ENOENT, norm)
            node = child
        return node

    def _parent(self, norm: str) -> tuple[_Dir, str]:
        parts = split_parts(norm)
        if not parts:
            raise os_error(errno.EACCES, norm, "the root cannot be changed")
        parent = self._lookup("/" + "/".join(parts[:-1]))
        if not isinstance(parent, _Dir):
            raise os_error(errno.ENOTDIR, norm)
        return parent, parts[-1]

    def _check_writable(self, norm: str) -> None:
        if self.read_only:
            raise os_error(errno.EROFS, norm)

    def _stat_of(self, node: _Node) -> StatTuple:
        if isinstance(node, _Dir):
            mode, size, nlink = _stat.S_IFDIR | node.perm, 0, 2
        else:
            assert isinstance(node, _File)
            mode, size, nlink = _stat.S_IFREG | node.perm, len(node.data), 1
        if self.read_only:
            mode &= ~0o222
        return (mode, node.ino, 0, nlink, 0, 0, size, node.atime, node.mtime, node.ctime)

    # ------------------------------------------------------------------ queries

    @expose
    def stat(self, path: str) -> StatTuple:
        """``(mode, ino, dev, nlink, uid, gid, size, atime, mtime, ctime)`` of ``path``."""
        norm = normalize(path)
        with self._lock:
            return self._stat_of(self._lookup(norm))

    def _dir(self, path: str) -> tuple[str, _Dir]:
        norm = normalize(path)
        node = self._lookup(norm)
        if not isinstance(node, _Dir):
            raise os_error(errno.ENOTDIR, norm)
        return norm, node

    @expose
    def listdir(self, path: str = "/") -> list[str]:
        """The names in directory ``path``, sorted."""
        with self._lock:
            return sorted(self._dir(path)[1].children)

    @expose
    def scandir(self, path: str = "/") -> list[tuple[str, bool, bool, StatTuple]]:
        """``[(name, is_dir, is_file, stat_tuple), ...]`` for directory ``path``."""
        with self._lock:
            d = self._dir(path)[1]
            return [
                (name, isinstance(n, _Dir), isinstance(n, _File), self._stat_of(n))
                for name, n in sorted(d.children.items())
            ]

    @expose
    def usage(self, path: str = "/") -> dict[str, int | None]:
        """What the tree holds and its limits (``path`` is ignored: one quota)."""
        with self._lock:
            return {
                "bytes_used": self._bytes,
                "max_bytes": self.max_bytes,
                "files_used": self._files,
                "max_files": self.max_files,
            }

    # ------------------------------------------------------------------ files

    @expose
    def open(self, path: str, mode: str = "rb") -> MemoryFile:
        """Open a file in a binary mode (``rb``, ``wb``, ``ab``, ``xb``, ``r+b``...)."""
        om = parse_mode(mode)
        norm = normalize(path)
        with self._lock:
            if om.writing:
                self._check_writable(norm)
            try:
                node = self._lookup(norm)
            except FileNotFoundError:
                if not om.create:
                    raise
                parent, name = self._parent(norm)
                self._charge_file(norm)
                node = parent.children[name] = _File()
                parent.touch()
            else:
                if isinstance(node, _Dir):
                    raise os_error(errno.EISDIR, norm)
                if om.exclusive:
                    raise os_error(errno.EEXIST, norm)
                assert isinstance(node, _File)
                if om.truncate:
                    self._charge(-len(node.data), norm)
                    node.data.clear()
                    node.touch()
            assert isinstance(node, _File)
            return MemoryFile(self, node, norm, om)

    # ------------------------------------------------------------------ changes

    @expose
    def mkdir(self, path: str, mode: int = 0o777) -> None:
        """Create directory ``path`` (its parent must exist)."""
        norm = normalize(path)
        with self._lock:
            if norm == "/":
                raise os_error(errno.EEXIST, norm)
            self._check_writable(norm)
            parent, name = self._parent(norm)
            if name in parent.children:
                raise os_error(errno.EEXIST, norm)
            self._charge_file(norm)
            parent.children[name] = _Dir(mode & 0o777)
            parent.touch()

    def _remove_node(self, norm: str, node: _Node) -> None:
        if isinstance(node, _File):
            self._charge(-len(node.data), norm)
        self._files = max(0, self._files - 1)

    def _delete(self, path: str, *, directory: bool) -> None:
        norm = normalize(path)
        with self._lock:
            self._check_writable(norm)
            parent, name = self._parent(norm)
            node = parent.children.get(name)
            if node is None:
                raise os_error(errno.ENOENT, norm)
            if not directory and isinstance(node, _Dir):
                raise os_error(errno.EISDIR, norm)
            if directory and not isinstance(node, _Dir):
                raise os_error(errno.ENOTDIR, norm)
            if directory and node.children:  # type: ignore[union-attr]
                raise os_error(errno.ENOTEMPTY, norm)
            del parent.children[name]
            parent.touch()
            self._remove_node(norm, node)

    @expose
    def remove(self, path: str) -> None:
        """Remove the file ``path`` (not a directory)."""
        self._delete(path, directory=False)

    @expose
    def unlink(self, path: str) -> None:
        """Same as :meth:`remove`."""
        self._delete(path, directory=False)

    @expose
    def rmdir(self, path: str) -> None:
        """Remove the empty directory ``path``."""
        self._delete(path, directory=True)

    @expose
    def rename(self, src: str, dst: str) -> None:
        """Rename ``src`` to ``dst``, replacing a file (or an empty directory) there."""
        snorm, dnorm = normalize(src), normalize(dst)
        with self._lock:
            self._check_writable(snorm)
            sparent, sname = self._parent(snorm)
            node = sparent.children.get(sname)
            if node is None:
                raise os_error(errno.ENOENT, snorm)
            dparent, dname = self._parent(dnorm)
            if snorm == dnorm:
                return
            if isinstance(node, _Dir) and (dnorm + "/").startswith(snorm + "/"):
                raise os_error(errno.EINVAL, snorm, "cannot move a directory into itself")
            old = dparent.children.get(dname)
            if old is not None:
                if isinstance(node, _Dir) and not isinstance(old, _Dir):
                    raise os_error(errno.ENOTDIR, dnorm)
                if isinstance(old, _Dir):
                    if not isinstance(node, _Dir):
                        raise os_error(errno.EISDIR, dnorm)
                    if old.children:
                        raise os_error(errno.ENOTEMPTY, dnorm)
                self._remove_node(dnorm, old)
            del sparent.children[sname]
            dparent.children[dname] = node
            sparent.touch()
            dparent.touch()

    @expose
    def replace(self, src: str, dst: str) -> None:
        """Same as :meth:`rename`."""
        self.rename(src, dst)
