"""Which shared libraries an extension module loads, found as the dynamic loader would.

:func:`read_elf` reads the dynamic section of a 64-bit little-endian ELF file
(``DT_NEEDED``, ``DT_RPATH``, ``DT_RUNPATH``, ``DT_SONAME``) without loading it.
:class:`Loader` resolves the ``DT_NEEDED`` entries of a set of objects, transitively, in
glibc's order (``ld.so(8)``):

1. ``DT_RPATH`` of the object, then of each object that loaded it, then of the
   executable (and libpython) that calls ``dlopen()`` on extension modules -- unless
   the object has a ``DT_RUNPATH``, which replaces them all;
2. (``LD_LIBRARY_PATH`` -- never set in a sandbox);
3. ``DT_RUNPATH`` of the object;
4. the loader cache ``/etc/ld.so.cache``;
5. the system directories (``/lib/<multiarch>``, ``/usr/lib/<multiarch>``, ``/lib64``,
   ``/usr/lib64``, ``/lib``, ``/usr/lib``).

``$ORIGIN`` is the directory of the object as it was opened (not its real path: the
loader does not resolve symbolic links there). In each directory the loader first tries
its ``glibc-hwcaps/*`` subdirectories; every variant present is reported. A file of the
wrong architecture is skipped, as the loader skips it. A name the search does not find
but that is already mapped into this process (``libpython`` of a shared build) resolves
to the mapped file.

Inside a sandbox the loader cannot read ``/etc/ld.so.cache`` unless it is granted; it
then falls back to the system directories. :attr:`Resolution.needs_cache` says whether
some library is found only through the cache (or differently there), so that the cache
is granted exactly when the loader needs it.
"""

from __future__ import annotations

import mmap
import os
import struct
import sys

from ._record import record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["ElfInfo", "Library", "Loader", "Resolution", "read_elf", "read_loader_cache"]

LOADER_CACHE = "/etc/ld.so.cache"

DT_NULL, DT_NEEDED, DT_STRTAB, DT_SONAME, DT_RPATH, DT_RUNPATH = 0, 1, 5, 14, 15, 29
PT_LOAD, PT_DYNAMIC = 1, 2


@record
class ElfInfo:
    """The parts of an ELF file's dynamic section the loader acts on."""

    machine: int
    needed: tuple[str, ...] = ()
    rpath: tuple[str, ...] = ()
    runpath: tuple[str, ...] = ()
    soname: str = ""


def read_elf(path: str) -> ElfInfo | None:
    """The dynamic section of the ELF file at ``path``; ``None`` if it is not one we read."""
    try:
        with open(path, "rb") as f:
            # Mapped, not read: only the headers and the dynamic section are touched.
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        return None
    try:
        return _parse(data)
    except (struct.error, ValueError, IndexError, OverflowError, UnicodeDecodeError):
        return None
    finally:
        data.close()


def _parse(data: mmap.mmap) -> ElfInfo | None:
    if data[:6] != b"\x7fELF\x02\x01":  # 64-bit, little-endian
        return None
    machine, = struct.unpack_from("<H", data, 0x12)
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    loads, dynamic = [], None
    for i in range(phnum):
        p_type, _, p_offset, p_vaddr, _, p_filesz = struct.unpack_from("<IIQQQQ", data, phoff + i * phentsize)
        if p_type == PT_LOAD:
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == PT_DYNAMIC:
            dynamic = (p_offset, p_filesz)
    if dynamic is None:
        return ElfInfo(machine)
    entries: list[tuple[int, int]] = []
    strtab = None
    for off in range(dynamic[0], dynamic[0] + dynamic[1] - 15, 16):
        tag, val = struct.unpack_from("<qQ", data, off)
        if tag == DT_NULL:
            break
        if tag == DT_STRTAB:  # a virtual address: map it to a file offset
            strtab = next((val - va + fo for va, fo, size in loads if va <= val < va + size), None)
        elif tag in (DT_NEEDED, DT_SONAME, DT_RPATH, DT_RUNPATH):
            entries.append((tag, val))
    if strtab is None:
        return ElfInfo(machine)

    def string(offset: int) -> str:
        start = strtab + offset
        end = data.find(b"\0", start)
        if end < 0:
            raise ValueError("unterminated string")
        return data[start:end].decode()

    found: dict[int, list[str]] = {DT_NEEDED: [], DT_SONAME: [], DT_RPATH: [], DT_RUNPATH: []}
    for tag, val in entries:
        text = string(val)
        found[tag] += [d for d in text.split(":") if d] if tag in (DT_RPATH, DT_RUNPATH) else [text]
    return ElfInfo(machine, tuple(found[DT_NEEDED]), tuple(found[DT_RPATH]), tuple(found[DT_RUNPATH]),
                   (found[DT_SONAME] or [""])[0])


def read_loader_cache(path: str = LOADER_CACHE) -> dict[str, list[str]]:
    """``soname -> [paths]`` from glibc's loader cache (either format); ``{}`` if unreadable."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return {}
    new_magic = b"glibc-ld.so.cache1.1"
    if data.startswith(b"ld.so-1.7.0"):
        nlibs, = struct.unpack_from("<I", data, 12)
        start = (16 + nlibs * 12 + 7) & ~7  # the new format follows, 8-byte aligned
    else:
        start = 0
    if data[start:start + len(new_magic)] != new_magic:
        return {}
    out: dict[str, list[str]] = {}
    try:
        nlibs, = struct.unpack_from("<I", data, start + 20)
        for i in range(nlibs):
            _, key, value, _, _ = struct.unpack_from("<iIIIQ", data, start + 48 + i * 24)
            name = data[start + key: data.index(b"\0", start + key)].decode()
            target = data[start + value: data.index(b"\0", start + value)].decode()
            out.setdefault(name, []).append(target)
    except (struct.error, ValueError, UnicodeDecodeError):
        return {}
    return out


def system_dirs() -> list[str]:
    """The loader's built-in directories, in its order (Debian's multiarch, then Fedora's)."""
    multiarch = getattr(sys.implementation, "_multiarch", "")
    dirs = [f"/lib/{multiarch}", f"/usr/lib/{multiarch}"] if multiarch else []
    dirs += ["/lib64", "/usr/lib64", "/lib", "/usr/lib"]
    return [d for d in dirs if os.path.isdir(d)]


@record
class Library:
    """One shared library found for a ``DT_NEEDED`` entry.

    ``via`` names how: ``"rpath"``, ``"runpath"``, ``"loader cache"``, ``"system dir"``,
    ``"already loaded"`` or ``"path"`` (the entry itself contains a slash).
    """

    soname: str
    path: str
    via: str
    needed_by: str


@record
class Resolution:
    """Every library the objects need, what was not found, and whether the cache is used."""

    libraries: tuple[Library, ...]
    missing: tuple[tuple[str, str], ...]  # (soname, needed by)
    needs_cache: bool

    def paths(self) -> list[str]:
        # Many objects need the same library: each file is resolved once.
        dirs: dict[str, str] = {}
        return list(dict.fromkeys(_realpath(p, dirs) for p in dict.fromkeys(lib.path for lib in self.libraries)))


class Loader:
    """Resolves ``DT_NEEDED`` entries as glibc's ``ld.so`` would for this interpreter."""

    def __init__(self, *, executable: str | None = None, cache: str = LOADER_CACHE,
                 dirs: list[str] | None = None, loaded: dict[str, str] | None = None) -> None:
        self._loaded = loaded
        executable = executable or sys.executable
        exe = read_elf(executable)
        self.machine = exe.machine if exe else _machine_of_this_process()
        # Extension modules are dlopen()ed by the executable (or by libpython in a shared
        # build): the DT_RPATH of that caller applies to them; a DT_RUNPATH does not.
        callers = [executable, *(p for n, p in self._already_loaded().items() if n.startswith("libpython"))]
        rpath: list[str] = []
        for caller in callers:
            info = read_elf(caller)
            if info is not None and not info.runpath:
                rpath += self._expand(info.rpath, os.path.dirname(os.path.abspath(caller)))
        self.caller_rpath = tuple(rpath)
        self.cache_path = cache
        self._cache: dict[str, list[str]] | None = None
        self.dirs = system_dirs() if dirs is None else list(dirs)
        self._machines: dict[str, bool] = {}
        self._infos: dict[str, ElfInfo | None] = {}
        self._searched: dict[tuple[str, str, tuple[str, ...]], tuple[list[Library], bool]] = {}

    @property
    def cache(self) -> dict[str, list[str]]:
        if self._cache is None:
            self._cache = read_loader_cache(self.cache_path)
        return self._cache

    def resolve(self, objects: Iterable[str]) -> Resolution:
        """The libraries ``objects`` (paths of ELF files) need, recursively."""
        found: dict[tuple[str, str, str], Library] = {}  # one per (soname, file, needed by)
        missing: dict[tuple[str, str], None] = {}
        needs_cache = False
        seen: set[tuple[str, tuple[str, ...]]] = set()
        todo = [(os.path.abspath(p), ()) for p in objects]
        reals: dict[str, str] = {}
        dirs: dict[str, str] = {}

        def real(p: str) -> str:
            r = reals.get(p)
            if r is None:
                r = reals[p] = _realpath(p, dirs)
            return r

        while todo:
            path, inherited = todo.pop()
            key = (real(path), inherited)
            if key in seen:
                continue
            seen.add(key)
            info = self._read(path)
            if info is None:
                continue
            origin = os.path.dirname(path)
            own_rpath = tuple(self._expand(info.rpath, origin))
            for name in info.needed:
                libs, cache_only = self._search(name, info, origin, inherited)
                needs_cache |= cache_only
                if not libs:
                    missing[(name, path)] = None
                for lib in libs:
                    lib = Library(lib.soname, lib.path, lib.via, needed_by=path)
                    found.setdefault((lib.soname, real(lib.path), real(path)), lib)
                    # What it loads searches its DT_RPATH and its loaders' (a RUNPATH hides its own).
                    todo.append((lib.path, (() if info.runpath else own_rpath) + inherited))
        libs = sorted(found.values(), key=lambda lib: (lib.path, lib.soname, lib.needed_by))
        return Resolution(tuple(libs), tuple(missing), needs_cache)

    def _search(self, name: str, info: ElfInfo, origin: str,
                inherited: tuple[str, ...]) -> tuple[list[Library], bool]:
        """The files the loader may take for ``name``, and whether only the cache finds one."""
        if "/" in name:
            path = name if os.path.isabs(name) else os.path.join(os.getcwd(), name)
            return ([Library(name, path, "path", "")] if self._usable(path) else []), False
        if info.runpath:
            via, dirs = "runpath", tuple(self._expand(info.runpath, origin))
        else:
            via, dirs = "rpath", (*self._expand(info.rpath, origin), *inherited, *self.caller_rpath)
        key = (name, via, dirs)  # many objects ask for the same library the same way
        if key not in self._searched:
            self._searched[key] = self._search_dirs(name, via, dirs)
        return self._searched[key]

    def _search_dirs(self, name: str, via: str, dirs: tuple[str, ...]) -> tuple[list[Library], bool]:
        hits = self._in_dirs(name, dirs)
        if hits:
            return [Library(name, p, via, "") for p in hits], False
        cached = [p for p in self.cache.get(name, ()) if self._usable(p)]
        system = self._in_dirs(name, self.dirs)
        libs = [Library(name, p, "system dir", "") for p in system]
        extra = [p for p in cached if not any(_same(p, s) for s in system)]
        libs += [Library(name, p, "loader cache", "") for p in extra]
        if not libs:
            loaded = self._already_loaded().get(name)
            if loaded:
                libs = [Library(name, loaded, "already loaded", "")]
        return libs, bool(extra)

    def _in_dirs(self, name: str, dirs: Iterable[str]) -> list[str]:
        """Candidates in the first directory that has one: hwcaps variants, then the plain file."""
        for d in dirs:
            hits = []
            hwcaps = os.path.join(d, "glibc-hwcaps")
            if os.path.isdir(hwcaps):
                try:
                    variants = sorted(os.listdir(hwcaps))
                except OSError:
                    variants = []
                hits += [p for v in variants if self._usable(p := os.path.join(hwcaps, v, name))]
            plain = os.path.join(d, name)
            if self._usable(plain):
                hits.append(plain)
            if hits:
                return hits
        return []

    def _usable(self, path: str) -> bool:
        """An ELF file of this process's architecture (what the loader accepts)."""
        if path not in self._machines:
            info = self._read(path) if os.path.isfile(path) else None
            self._machines[path] = info is not None and info.machine == self.machine
        return self._machines[path]

    def _read(self, path: str) -> "ElfInfo | None":
        """:func:`read_elf`, once per path for this loader."""
        try:
            return self._infos[path]
        except KeyError:
            info = self._infos[path] = read_elf(path)
            return info

    def _expand(self, entries: Iterable[str], origin: str) -> list[str]:
        out: list[str] = []
        for entry in entries:
            entry = entry.replace("${ORIGIN}", origin).replace("$ORIGIN", origin)
            machine = os.uname().machine
            entry = entry.replace("${PLATFORM}", machine).replace("$PLATFORM", machine)
            if "$LIB" in entry or "${LIB}" in entry:
                multiarch = getattr(sys.implementation, "_multiarch", "")
                for lib in ("lib64", "lib", *([f"lib/{multiarch}"] if multiarch else [])):
                    out.append(entry.replace("${LIB}", lib).replace("$LIB", lib))
            elif "$" not in entry:  # an unknown token: the loader ignores the entry
                out.append(entry)
        return out

    def _already_loaded(self) -> dict[str, str]:
        if self._loaded is None:
            self._loaded = _mapped_libraries()
        return self._loaded


def _mapped_libraries() -> dict[str, str]:
    """``basename -> path`` of the shared objects mapped into this process."""
    out: dict[str, str] = {}
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                path = fields[5].strip() if len(fields) == 6 else ""
                if path.startswith("/") and ".so" in path:
                    out.setdefault(os.path.basename(path), path)
    except OSError:
        pass
    return out


def _machine_of_this_process() -> int:
    return {"x86_64": 62, "aarch64": 183}.get(os.uname().machine, 0)


def _realpath(path: str, dirs: dict[str, str]) -> str:
    """``os.path.realpath(path)``, resolving each directory once (``dirs`` caches them):
    only a last component that is itself a link needs the full walk."""
    head, tail = os.path.split(path)
    real_head = dirs.get(head)
    if real_head is None:
        real_head = dirs[head] = os.path.realpath(head)
    candidate = os.path.join(real_head, tail)
    if tail in ("", ".", "..") or os.path.islink(candidate):
        return os.path.realpath(path)
    return candidate


def _same(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
