"""Landlock: read-only access to the standard library and the allowed packages only.

Raw syscalls through ctypes (no dependency). Every access right the running kernel's
ABI knows is *handled*, so whatever no rule grants is denied: all writes, all other
paths, TCP bind/connect (ABI 4, handled with no rules) and, from ABI 6, abstract unix
sockets and signals to processes outside the sandbox.

Building a ruleset opens one ``O_PATH`` descriptor per rule, so it is split in two:
:func:`prepare` builds (and caches, per ``allow_imports``) a ruleset fd, which a
long-lived fork server can do once; :func:`enforce` applies it in the child.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import os
import struct
import sys
TYPE_CHECKING = False  # (typing is not imported at run time)

if TYPE_CHECKING:
    from ._packages import Access

__all__ = [
    "DeniedImportFinder", "Ruleset", "abi_version", "cached", "discard_cache", "enforce",
    "fill_import_caches", "fill_metadata_caches", "install_import_guard", "prepare", "rule_paths", "unavailable_hint",
]

SYS_CREATE_RULESET, SYS_ADD_RULE, SYS_RESTRICT_SELF = 444, 445, 446  # x86_64 and aarch64
LANDLOCK_CREATE_RULESET_VERSION = 1 << 0
LANDLOCK_RULE_PATH_BENEATH = 1

# Filesystem rights, with the ABI version that introduced them.
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FS_ABI1 = (1 << 13) - 1  # EXECUTE .. MAKE_SYM
FS_REFER, FS_TRUNCATE, FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1

READ_FILE = FS_READ_FILE
READ_DIR = FS_READ_FILE | FS_READ_DIR

BASE_PACKAGES = ("capbridge", "sandbox_vm", "host_apis", "cloudpickle", "tblib")
EXCLUDED_STDLIB_ENTRIES = frozenset({"site-packages", "dist-packages"})

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _syscall(nr: int, *args: object) -> int:
    rc = _libc.syscall(ctypes.c_long(nr), *args)
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return rc


def abi_version() -> tuple[int, int]:
    """``(abi, 0)`` when Landlock is enabled, else ``(0, errno)``."""
    try:
        return _syscall(SYS_CREATE_RULESET, None, ctypes.c_size_t(0),
                        ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION)), 0
    except OSError as exc:
        return 0, exc.errno or 0


def unavailable_hint(err: int) -> str:
    """What a person can do about Landlock failing with ``err``."""
    import errno

    if err == errno.ENOSYS:
        return "kernel built without CONFIG_SECURITY_LANDLOCK (needs Linux >= 5.13 with it enabled)"
    if err == errno.EOPNOTSUPP:
        return ("Landlock is built in but not enabled: add 'landlock' to the lsm= boot parameter "
                "(or CONFIG_LSM)")
    if err == errno.EPERM:
        return "no_new_privs could not be set, or a seccomp filter denies the landlock syscalls"
    if err == errno.E2BIG:
        return "too many Landlock layers are already stacked on this process (limit 16)"
    return f"landlock syscall failed: {os.strerror(err)}"


def handled_rights(abi: int) -> tuple[int, int, int]:
    """``(fs, net, scoped)`` masks of everything the kernel of ``abi`` can restrict."""
    fs = FS_ABI1
    if abi >= 2:
        fs |= FS_REFER
    if abi >= 3:
        fs |= FS_TRUNCATE
    if abi >= 5:
        fs |= FS_IOCTL_DEV
    net = NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0
    return fs, net, scoped


def stdlib_dir() -> str:
    return os.path.dirname(os.__file__)


def base_paths(path: list[str] | None = None) -> list[str]:
    """What every sandbox may read: the standard library (not ``site-packages``), its
    extension modules and the shared libraries they load, capbridge's own packages and
    the time-zone database. ``path``: the import path to look in (``sys.path``)."""
    from . import _elf, _packages  # imported when first needed: the fork server starts without them

    path = sys.path if path is None else path
    stdlib = stdlib_dir()
    paths = [os.path.join(stdlib, e) for e in sorted(os.listdir(stdlib)) if e not in EXCLUDED_STDLIB_ENTRIES]
    dynload = [p for p in path if p.endswith("lib-dynload") and os.path.isdir(p)]
    paths += dynload
    libs = _elf.Loader().resolve(
        os.path.join(d, e) for d in dynload for e in sorted(os.listdir(d)) if e.endswith(".so"))
    paths += libs.paths() + ([_elf.LOADER_CACHE] if libs.needs_cache else [])
    for name in BASE_PACKAGES:
        paths += _packages.locations(name, path)
    # The public time-zone database, so datetimes with a ZoneInfo work inside.
    paths += [p for p in _zoneinfo_dirs() if os.path.isdir(p)]
    return paths


def rule_paths(allow_imports: tuple[str, ...], access: Access | None = None,
               base: list[str] | None = None) -> list[str]:
    """Every path that gets a read-only rule, in a stable order."""
    if access is None and allow_imports:
        from . import _packages

        access = _packages.resolve(allow_imports)
    extra = access.paths() if access is not None else []
    return list(dict.fromkeys([*(base_paths() if base is None else base), *extra]))


def _zoneinfo_dirs() -> list[str]:
    # CPython's default TZPATH (importing zoneinfo to ask costs milliseconds).
    return ["/usr/share/zoneinfo", "/usr/lib/zoneinfo", "/usr/share/lib/zoneinfo", "/etc/zoneinfo"]


class Ruleset:
    """A prepared ruleset: its fd, the ABI it was built for and what it allows.

    ``finder_dirs`` are shared folders (namespace packages) whose listings the import
    system must cache before enforcement, since they cannot be listed after it.
    """

    def __init__(self, fd: int, abi: int, paths: list[str], seconds: float,
                 finder_dirs: tuple[str, ...] = ()) -> None:
        self.fd, self.abi, self.paths, self.seconds = fd, abi, paths, seconds
        self.finder_dirs = finder_dirs


_CACHE: dict[tuple[str, ...], Ruleset] = {}


def _key(allow_imports: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted({n.partition(".")[0] for n in allow_imports}))


def cached(allow_imports: tuple[str, ...]) -> Ruleset | None:
    """The ruleset :func:`prepare` already built for ``allow_imports``, if any."""
    return _CACHE.get(_key(allow_imports))


def prepare(allow_imports: tuple[str, ...], base: list[str] | None = None) -> Ruleset:
    """Build (or return the cached) ruleset for ``allow_imports``.

    Also fills the import system's directory caches, so imports keep working after
    enforcement although the parent directories themselves cannot be listed.
    ``base``: the :func:`base_paths` already computed (the host works them out while
    the fork server starts). Raises ``OSError`` when the kernel refuses.
    """
    key = _key(allow_imports)
    if key in _CACHE:
        return _CACHE[key]
    import time

    start = time.perf_counter()
    abi, err = abi_version()
    if not abi:
        raise OSError(err, unavailable_hint(err))
    fs, net, scoped = handled_rights(abi)
    attr = struct.pack("=QQQ", fs, net, scoped)[: 8 if abi < 4 else 16 if abi < 6 else 24]
    buf = ctypes.create_string_buffer(attr, len(attr))
    fd = _syscall(SYS_CREATE_RULESET, buf, ctypes.c_size_t(len(attr)), ctypes.c_uint32(0))
    access = None
    try:
        if key:  # (without it, _packages and _elf stay unimported in a fork server)
            from . import _packages

            access = _packages.resolve(key)
        paths = rule_paths(key, access, base)
        for path in paths:
            _add_rule(fd, path)
        # Listing (not reading) the stdlib directory itself, so a fresh import
        # system (a subinterpreter, importlib.invalidate_caches()) still finds the
        # standard library. File contents beneath stay limited to the rules above;
        # the names in site-packages become listable, their contents do not.
        _add_rule(fd, stdlib_dir(), FS_READ_DIR)
    except BaseException:
        os.close(fd)
        raise
    finder_dirs = access.finder_dirs if access is not None else ()
    fill_import_caches(finder_dirs)
    if access is not None and access.distributions:
        fill_metadata_caches()
    ruleset = _CACHE[key] = Ruleset(fd, abi, paths, time.perf_counter() - start, finder_dirs)
    return ruleset


def fill_import_caches(extra_dirs: tuple[str, ...] = ()) -> None:
    """Let every ``sys.path`` finder (and those of ``extra_dirs``) list its directory now.

    After enforcement ``site-packages`` and the stdlib directory itself cannot be
    listed (only the entries granted beneath them); the cached listings stay valid
    as long as the directories' mtimes do not change.
    """
    importlib.machinery.PathFinder.find_spec("_capbridge_fill_import_caches_")
    if extra_dirs:
        importlib.machinery.PathFinder.find_spec("_capbridge_fill_import_caches_", list(extra_dirs))


def fill_metadata_caches() -> None:
    """Let ``importlib.metadata`` list each ``sys.path`` directory now, while it still can.

    Packages that read their own version at import (``importlib.metadata.version``)
    then find their ``.dist-info`` (readable when allowed) after enforcement too; like
    the import system's, the cached listing holds names only.
    """
    import importlib.metadata

    for _ in importlib.metadata.distributions():
        pass


def _add_rule(ruleset_fd: int, path: str, access: int | None = None) -> None:
    try:
        target = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        if access is None:
            access = READ_DIR if os.path.isdir(path) else READ_FILE
        attr = ctypes.create_string_buffer(struct.pack("=Qi", access, target), 12)
        _syscall(SYS_ADD_RULE, ctypes.c_int(ruleset_fd), ctypes.c_int(LANDLOCK_RULE_PATH_BENEATH),
                 attr, ctypes.c_uint32(0))
    finally:
        os.close(target)


def enforce(ruleset: Ruleset) -> None:
    """Restrict the calling thread (and its future threads) to ``ruleset``.

    Sets no_new_privs first, as the kernel requires without CAP_SYS_ADMIN. Only the
    calling thread is restricted, so call it while the process has one thread.
    """
    if _libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        err = ctypes.get_errno()
        raise OSError(err, "prctl(PR_SET_NO_NEW_PRIVS) failed")
    _syscall(SYS_RESTRICT_SELF, ctypes.c_int(ruleset.fd), ctypes.c_uint32(0))


class DeniedImportFinder:
    """A ``sys.meta_path`` finder turning "found but unreadable" into ModuleNotFoundError.

    The import caches still list every package in ``site-packages``; without this a
    package outside ``allow_imports`` would fail with PermissionError, which
    ``try: import x / except ImportError`` fallbacks do not expect.
    """

    @classmethod
    def find_spec(cls, name: str, path: object = None, target: object = None) -> None:
        if path is not None:
            return None  # submodules of an importable package are readable
        spec = importlib.machinery.PathFinder.find_spec(name)
        if spec is None or not spec.has_location or not spec.origin:
            return None
        try:
            os.close(os.open(spec.origin, os.O_RDONLY | os.O_CLOEXEC))
        except PermissionError:
            raise ModuleNotFoundError(f"No module named {name!r} (not in allow_imports)", name=name) from None
        except OSError:
            pass
        return None


def install_import_guard() -> None:
    if DeniedImportFinder not in sys.meta_path:
        sys.meta_path.insert(0, DeniedImportFinder)


def discard_cache(keep: Ruleset | None = None) -> None:
    """Close every cached ruleset fd except ``keep`` (a child needs only its own)."""
    for key, ruleset in list(_CACHE.items()):
        if ruleset is not keep:
            try:
                os.close(ruleset.fd)
            except OSError:
                pass
            del _CACHE[key]
