"""``VirtualFS``: host directories mounted at virtual paths, reachable only beneath them.

Security model (every call):

* The virtual path is normalised lexically; ``..`` above ``/`` is refused.
* The longest mount prefix selects a host directory, held open as a descriptor since
  construction; the rest of the path is opened beneath that descriptor with
  ``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`` or a
  component-by-component ``O_NOFOLLOW`` walk (:mod:`host_apis._beneath`). Resolution
  happens at open time, so a symlink swapped in after a check is still refused.
* **Symbolic links are never followed**, not even ones that stay inside the mount.
  ``stat`` reports a link itself (``S_IFLNK``); opening or listing through one fails
  with ``OSError(ELOOP)``.
* Only regular files are opened and only directories listed: the entry is checked
  with ``fstatat(AT_SYMLINK_NOFOLLOW)`` before opening (so device nodes are never
  opened), opened with ``O_NONBLOCK | O_NOCTTY`` (so a FIFO swapped in cannot block)
  and checked again with ``fstat``. Anything else is ``PermissionError(EACCES)``.
* **Hard links**: a regular file with ``st_nlink > 1`` is never opened for writing
  (``O_TRUNC`` is applied only after that check), and is not opened for reading either
  unless its mount says ``allow_hard_links=True``: a hard link made by someone on the
  host could name a file outside the mount.
* Errors name the virtual path, never a host path.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat as _stat
import threading
from dataclasses import dataclass
from typing import Mapping, Union

from capbridge import expose

from . import _beneath
from ._common import (
    StatQueries,
    OpenMode,
    Quota,
    StatTuple,
    normalize,
    os_error,
    parse_mode,
    rethrow,
    split_parts,
)
from ._filebase import FileBase

__all__ = ["Mount", "VirtualFS", "HostFile"]


@dataclass(frozen=True)
class Mount:
    """One host directory as the sandbox may see it.

    ``host_path``: an existing host directory (resolved once, when the ``VirtualFS`` is
    built). ``writable``: allow creating, writing, removing and renaming beneath it.
    ``max_bytes``/``max_files``: quotas on bytes written and on files plus directories
    created through this mount (``None``: unlimited; nothing is credited back).
    ``allow_hard_links``: allow reading regular files with more than one hard link.
    """

    host_path: str
    writable: bool = False
    max_bytes: int | None = None
    max_files: int | None = None
    allow_hard_links: bool = False


class _Mounted:
    """A mount as ``VirtualFS`` holds it: the open root descriptor and its quota."""

    def __init__(self, vpath: str, index: int, spec: Mount) -> None:
        self.vpath = vpath
        self.dev = index + 1
        self.spec = spec
        self.quota = Quota(spec.max_bytes, spec.max_files)
        fd = os.open(os.fspath(spec.host_path), _beneath.DIR_FLAGS & ~os.O_NOFOLLOW)
        self.fd: int | None = fd


def _fix_stat(st: os.stat_result, mounted: _Mounted) -> StatTuple:
    mode = st.st_mode
    if not mounted.spec.writable:
        mode &= ~(_stat.S_IWUSR | _stat.S_IWGRP | _stat.S_IWOTH)
    return (
        mode,
        st.st_ino,
        mounted.dev,
        st.st_nlink,
        0,
        0,
        st.st_size if _stat.S_ISREG(st.st_mode) or _stat.S_ISDIR(st.st_mode) else 0,
        st.st_atime,
        st.st_mtime,
        st.st_ctime,
    )


_VDIR_STAT: StatTuple = (_stat.S_IFDIR | 0o555, 0, 0, 2, 0, 0, 0, 0.0, 0.0, 0.0)


class HostFile(FileBase):
    """A regular host file opened beneath a mount (binary; see :class:`FileBase`)."""

    def __init__(self, fd: int, name: str, mode: OpenMode, quota: Quota) -> None:
        super().__init__(name, mode)
        self._fd = fd
        self._quota = quota

    def _read(self, n: int) -> bytes:
        try:
            return os.read(self._fd, n)
        except OSError as e:
            rethrow(e, self._name)

    def _write(self, data: bytes) -> int:
        # Charged before a byte is written: the data, plus the hole a write past the
        # end leaves (the file's size grows by it even though it reads as zeros).
        gap = 0 if self._mode.append else max(0, self._seek(0, 1) - self._size())
        self._quota.charge_bytes(gap + len(data), self._name)
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as e:
            rethrow(e, self._name)
        return len(data)

    def _seek(self, offset: int, whence: int) -> int:
        try:
            return os.lseek(self._fd, offset, whence)
        except OSError as e:
            rethrow(e, self._name)

    def _size(self) -> int:
        return os.fstat(self._fd).st_size

    def _truncate(self, size: int) -> None:
        self._quota.charge_bytes(size - self._size(), self._name)
        try:
            os.ftruncate(self._fd, size)
        except OSError as e:
            rethrow(e, self._name)

    def _close(self) -> None:
        os.close(self._fd)

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            self._closed = True
            try:
                os.close(self._fd)
            except OSError:
                pass


MountSpec = Union[str, "os.PathLike[str]", Mount]


class VirtualFS(StatQueries):
    """A virtual file tree made of host directories mounted at virtual paths.

    ``VirtualFS({"/data": "/srv/data", "/out": Mount("/tmp/x", writable=True,
    max_bytes=10_000_000, max_files=100)})``: a plain path mounts read-only. Virtual
    paths are absolute; mounts may nest (the longest prefix wins); directories above
    mount points exist virtually and are read-only. Paths under no mount raise
    ``FileNotFoundError`` (``PermissionError(EROFS)`` when creating in a virtual
    directory); writes to read-only mounts raise ``PermissionError(EROFS)``.
    ``stat`` returns a plain 10-tuple in :class:`os.stat_result` order (see
    :data:`host_apis.StatTuple`). Call :meth:`close` on the host when done.
    """

    #: Tells the sandbox to route open() and os functions to this grant (as ``fs``).
    capbridge_file_system = True

    def __init__(self, mounts: Mapping[str, MountSpec]) -> None:
        if not isinstance(mounts, Mapping) or not mounts:
            raise ValueError("VirtualFS needs a mapping of at least one virtual path to a mount")
        self._mounts: dict[str, _Mounted] = {}
        self._lock = threading.Lock()
        try:
            for index, (vpath, spec) in enumerate(mounts.items()):
                norm = normalize(vpath)
                if norm in self._mounts:
                    raise ValueError(f"{vpath!r} is mounted twice")
                if not isinstance(spec, Mount):
                    spec = Mount(os.fspath(spec))
                self._mounts[norm] = _Mounted(norm, index, spec)
        except BaseException:
            self.close()
            raise
        self._vdirs: set[str] = {"/"}
        for vpath in self._mounts:
            parts = split_parts(vpath)
            for i in range(len(parts)):
                self._vdirs.add("/" + "/".join(parts[:i]))

    # ------------------------------------------------------------------ host only

    def close(self) -> None:
        """Release the mount descriptors (host only; open files stay usable)."""
        for m in getattr(self, "_mounts", {}).values():
            if m.fd is not None:
                fd, m.fd = m.fd, None
                os.close(fd)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"<VirtualFS {sorted(self._mounts)}>"

    # ------------------------------------------------------------------ resolution

    def _find(self, path: str) -> tuple[str, _Mounted | None, list[str]]:
        norm = normalize(path)
        parts = split_parts(norm)
        for i in range(len(parts), -1, -1):
            m = self._mounts.get("/" + "/".join(parts[:i]))
            if m is not None:
                if m.fd is None:
                    raise ValueError("VirtualFS is closed")
                return norm, m, parts[i:]
        return norm, None, parts

    def _child_mounts(self, norm: str) -> list[str]:
        prefix = norm.rstrip("/") + "/"
        names = set()
        for vpath in self._mounts:
            if vpath != norm and vpath.startswith(prefix):
                names.add(vpath[len(prefix) :].split("/")[0])
        return sorted(names)

    def _writable(self, norm: str, m: _Mounted | None, rest: list[str]) -> _Mounted:
        if m is None:
            parent = "/" + "/".join(split_parts(norm)[:-1])
            if norm in self._vdirs or parent in self._vdirs:
                raise os_error(errno.EROFS, norm)
            raise os_error(errno.ENOENT, norm)
        if not m.spec.writable:
            raise os_error(errno.EROFS, norm)
        if not rest or norm in self._mounts or norm in self._vdirs:
            raise os_error(errno.EACCES, norm, "mount points cannot be changed")
        return m

    def _lstat(self, m: _Mounted, rest: list[str], norm: str) -> os.stat_result:
        assert m.fd is not None
        try:
            if not rest:
                return os.fstat(m.fd)
            parent = _beneath.open_parent(m.fd, rest)
            try:
                return os.stat(rest[-1], dir_fd=parent, follow_symlinks=False)
            finally:
                os.close(parent)
        except OSError as e:
            rethrow(e, norm)

    # ------------------------------------------------------------------ queries

    @expose
    def stat(self, path: str) -> StatTuple:
        """``(mode, ino, dev, nlink, uid, gid, size, atime, mtime, ctime)`` of ``path``.

        Symbolic links are not followed: a link reports itself.
        """
        norm, m, rest = self._find(path)
        if m is None or (norm in self._vdirs and norm not in self._mounts):
            if norm in self._vdirs:
                return _VDIR_STAT
            raise os_error(errno.ENOENT, norm)
        return _fix_stat(self._lstat(m, rest, norm), m)

    def _open_dir(self, m: _Mounted, rest: list[str], norm: str) -> int:
        assert m.fd is not None
        try:
            return _beneath.open_beneath(
                m.fd, rest, os.O_RDONLY | os.O_DIRECTORY | os.O_NONBLOCK
            )
        except OSError as e:
            rethrow(e, norm)

    @expose
    def listdir(self, path: str = "/") -> list[str]:
        """The names in directory ``path``, sorted."""
        norm, m, rest = self._find(path)
        if m is None or (norm in self._vdirs and norm not in self._mounts):
            if norm in self._vdirs:
                return self._child_mounts(norm)
            raise os_error(errno.ENOENT, norm)
        fd = self._open_dir(m, rest, norm)
        try:
            names = set(os.listdir(fd))
        except OSError as e:
            rethrow(e, norm)
        finally:
            os.close(fd)
        names.update(self._child_mounts(norm))
        return sorted(names)

    @expose
    def scandir(self, path: str = "/") -> list[tuple[str, bool, bool, StatTuple]]:
        """``[(name, is_dir, is_file, stat_tuple), ...]`` for directory ``path``.

        Nothing is followed: a symbolic link has ``is_dir`` and ``is_file`` false.
        """
        norm, m, rest = self._find(path)
        out: dict[str, tuple[str, bool, bool, StatTuple]] = {}
        if m is None or (norm in self._vdirs and norm not in self._mounts):
            if norm not in self._vdirs:
                raise os_error(errno.ENOENT, norm)
        else:
            fd = self._open_dir(m, rest, norm)
            try:
                with os.scandir(fd) as it:
                    for entry in it:
                        try:
                            st = entry.stat(follow_symlinks=False)
                        except OSError:
                            continue
                        out[entry.name] = (
                            entry.name,
                            _stat.S_ISDIR(st.st_mode),
                            _stat.S_ISREG(st.st_mode),
                            _fix_stat(st, m),
                        )
            except OSError as e:
                rethrow(e, norm)
            finally:
                os.close(fd)
        for name in self._child_mounts(norm):
            child = norm.rstrip("/") + "/" + name
            st = self.stat(child)
            out[name] = (name, True, False, st)
        return [out[k] for k in sorted(out)]

    @expose
    def usage(self, path: str) -> dict[str, int | None]:
        """Quota use of the mount holding ``path``: bytes/files written and limits."""
        norm, m, _ = self._find(path)
        if m is None:
            raise os_error(errno.ENOENT, norm)
        return m.quota.usage()

    # ------------------------------------------------------------------ files

    @expose
    def open(self, path: str, mode: str = "rb") -> HostFile:
        """Open a regular file in a binary mode (``rb``, ``wb``, ``ab``, ``xb``, ``r+b``...)."""
        om = parse_mode(mode)
        try:
            return self._open(path, om)
        except FileExistsError:
            if om.exclusive:
                raise
            return self._open(path, om)  # created by someone else since we looked

    def _open(self, path: str, om: OpenMode) -> HostFile:
        norm, m, rest = self._find(path)
        if om.writing:
            m = self._writable(norm, m, rest)
        elif m is None or not rest:
            if m is None and norm not in self._vdirs:
                raise os_error(errno.ENOENT, norm)
            raise os_error(errno.EISDIR, norm)
        assert m.fd is not None
        # Look before opening, without following anything: never open a device or FIFO.
        created = False
        try:
            pre = self._lstat(m, rest, norm)
        except FileNotFoundError:
            if not om.create:
                raise
            pre = None
        if pre is not None:
            if om.exclusive:
                raise os_error(errno.EEXIST, norm)
            self._check_kind(pre, om, m, norm)
        flags = os.O_NONBLOCK | os.O_NOCTTY
        flags |= os.O_RDWR if om.reading and om.writing else os.O_WRONLY if om.writing else os.O_RDONLY
        if om.append:
            flags |= os.O_APPEND
        if pre is None:
            m.quota.charge_file(norm)
            flags |= os.O_CREAT | os.O_EXCL
        try:
            fd = _beneath.open_beneath(m.fd, rest, flags, 0o666)
            created = pre is None
        except OSError as e:
            if pre is None:
                m.quota.refund_file()
            rethrow(e, norm)
        try:
            st = os.fstat(fd)
            self._check_kind(st, om, m, norm)
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
            if om.truncate and not created:
                os.ftruncate(fd, 0)
            if om.append:
                os.lseek(fd, 0, os.SEEK_END)
        except BaseException as e:
            os.close(fd)
            if isinstance(e, OSError) and e.filename != norm:
                rethrow(e, norm)
            raise
        return HostFile(fd, norm, om, m.quota)

    @staticmethod
    def _check_kind(st: os.stat_result, om: OpenMode, m: _Mounted, norm: str) -> None:
        if _stat.S_ISDIR(st.st_mode):
            raise os_error(errno.EISDIR, norm)
        if _stat.S_ISLNK(st.st_mode):
            raise os_error(errno.ELOOP, norm, "symbolic links are not followed")
        if not _stat.S_ISREG(st.st_mode):
            raise os_error(errno.EACCES, norm, "not a regular file")
        if st.st_nlink > 1 and (om.writing or not m.spec.allow_hard_links):
            raise os_error(errno.EACCES, norm, "file has several hard links")

    # ------------------------------------------------------------------ changes

    @expose
    def mkdir(self, path: str, mode: int = 0o777) -> None:
        """Create directory ``path`` (its parent must exist)."""
        norm, m, rest = self._find(path)
        if norm in self._mounts or norm in self._vdirs:
            raise os_error(errno.EEXIST, norm)
        m = self._writable(norm, m, rest)
        assert m.fd is not None
        m.quota.charge_file(norm)
        try:
            parent = _beneath.open_parent(m.fd, rest)
            try:
                os.mkdir(rest[-1], mode & 0o777, dir_fd=parent)
            finally:
                os.close(parent)
        except OSError as e:
            m.quota.refund_file()
            rethrow(e, norm)

    def _unlink(self, path: str, rmdir: bool) -> None:
        norm, m, rest = self._find(path)
        m = self._writable(norm, m, rest)
        assert m.fd is not None
        try:
            parent = _beneath.open_parent(m.fd, rest)
            try:
                if rmdir:
                    os.rmdir(rest[-1], dir_fd=parent)
                else:
                    os.unlink(rest[-1], dir_fd=parent)
            finally:
                os.close(parent)
        except OSError as e:
            rethrow(e, norm)

    @expose
    def remove(self, path: str) -> None:
        """Remove the file ``path`` (not a directory)."""
        self._unlink(path, rmdir=False)

    @expose
    def unlink(self, path: str) -> None:
        """Same as :meth:`remove`."""
        self._unlink(path, rmdir=False)

    @expose
    def rmdir(self, path: str) -> None:
        """Remove the empty directory ``path``."""
        self._unlink(path, rmdir=True)

    @expose
    def rename(self, src: str, dst: str) -> None:
        """Rename ``src`` to ``dst`` within one writable mount (replacing a file there)."""
        snorm, sm, srest = self._find(src)
        dnorm, dm, drest = self._find(dst)
        sm = self._writable(snorm, sm, srest)
        dm = self._writable(dnorm, dm, drest)
        if sm is not dm:
            raise os_error(errno.EXDEV, snorm, "Invalid cross-device link")
        assert sm.fd is not None
        try:
            sp = _beneath.open_parent(sm.fd, srest)
            try:
                dp = _beneath.open_parent(sm.fd, drest)
                try:
                    os.rename(srest[-1], drest[-1], src_dir_fd=sp, dst_dir_fd=dp)
                finally:
                    os.close(dp)
            finally:
                os.close(sp)
        except OSError as e:
            rethrow(e, snorm)

    @expose
    def replace(self, src: str, dst: str) -> None:
        """Same as :meth:`rename`."""
        self.rename(src, dst)
