"""What ``allow_imports`` makes readable: installed distributions, found from their metadata.

For each allowed top-level import name, :func:`resolve` finds the distributions that
install it (``top_level.txt`` or the ``RECORD`` file list), follows their
``Requires-Dist`` (markers evaluated for this interpreter, extras as requested), and
turns each distribution's own file list into read-only paths:

* a regular package directory (it has ``__init__.py``), a vendored library folder
  (``numpy.libs``, ``.dylibs``) and the ``.dist-info`` folder become one rule each;
* a folder shared with other distributions (a namespace package, the top-level
  ``__pycache__``) is not opened: only this distribution's entries beneath it are, and
  its listing is cached in the import system before lockdown so imports still find
  them (:attr:`Access.finder_dirs`);
* installed data files outside ``site-packages`` (not scripts or C headers) are files;
* a listed name that is a symbolic link is skipped (a rule would follow it; wheels
  install none);
* the shared libraries the distribution's extension modules need are found with
  :class:`sandbox_vm._elf.Loader`, as the dynamic loader would find them.

Nothing else in ``site-packages`` is opened. A name without a distribution (a plain
directory on the path, an editable checkout) falls back to where the import system
finds it.
"""

from __future__ import annotations

import functools
import importlib.machinery
import os
import re
import sys
TYPE_CHECKING = False
if TYPE_CHECKING:  # (typing is not imported at run time: it costs start-up)
    from collections.abc import Iterable
    from typing import Any

from . import _elf
from ._forkserver import server_paths
from ._record import record

__all__ = [
    "Access", "Distribution", "Entry", "check_names", "describe", "locations", "resolve", "sandbox_path", "server_paths",
]

# Kinds of readable entries, in the order `describe` prints them.
PACKAGE, VENDORED, METADATA, DATA, LIBRARY, LOADER_CACHE = (
    "package files", "vendored libraries", "metadata", "data files", "shared library", "loader cache")
_MAX_WALK = 20000  # files scanned for extension modules in a directory without a RECORD


# -- the sandbox's import path ---------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _sandbox_path() -> tuple[str, ...]:
    stdlib = os.path.dirname(os.__file__)
    dynload = [p for p in sys.path if p.endswith("lib-dynload")]
    return tuple(dict.fromkeys([stdlib, *dynload, *server_paths()]))


def sandbox_path() -> list[str]:
    """``sys.path`` of a sandbox: the standard library, then :func:`server_paths`.

    Computed once per process, as this process's fork server is started once.
    """
    return list(_sandbox_path())


# -- validating names on the host ------------------------------------------------------

def check_names(value: Any, what: str, path: list[str] | None = None) -> tuple[str, ...]:
    """``value`` as a tuple of importable module names, or ``ValueError`` saying what is wrong.

    ``what`` names the argument in messages. Only the top-level module of a dotted name
    must exist; it is looked up on the sandbox's import path without importing anything.
    """
    if value is None or value == ():
        return ()
    if isinstance(value, (str, bytes)):
        raise ValueError(f"{what} takes a tuple of import names, not a bare string: "
                         f"write {what}=({value!r},)")
    try:
        names = tuple(value)
    except TypeError:
        raise TypeError(f"{what} takes a tuple of import names like ('numpy',), "
                        f"not {type(value).__name__}") from None
    for name in names:
        if not isinstance(name, str) or not name or not all(p.isidentifier() for p in name.split(".")):
            hint = _import_name_hint(name) if isinstance(name, str) else ""
            raise ValueError(f"{what} takes import names like 'numpy', not {name!r}{hint}")
    if not names:
        return ()
    path = sandbox_path() if path is None else path
    for name in names:
        top = name.partition(".")[0]
        if not _importable(top, path):
            raise ValueError(
                f"{what}: no module named {top!r} can be imported in the sandbox "
                f"(it looks in the standard library and {', '.join(path[2:]) or 'site-packages'})"
                f"{_import_name_hint(top)}. Install it into this environment, or correct the name."
            )
    return tuple(dict.fromkeys(names))


def _importable(top: str, path: list[str]) -> bool:
    if top in sys.builtin_module_names:
        return True
    try:
        if importlib.machinery.FrozenImporter.find_spec(top) is not None:
            return True
        return importlib.machinery.PathFinder.find_spec(top, path) is not None
    except (ImportError, ValueError):
        return False


def _import_name_hint(name: str) -> str:
    """'; the distribution X is imported as Y' when ``name`` is a distribution's name."""
    import importlib.metadata as md

    try:
        dist = md.distribution(name)
    except (md.PackageNotFoundError, ValueError, OSError):
        return ""
    tops = sorted(_top_level_names(dist))
    return f"; {name!r} is a distribution, imported as {' or '.join(map(repr, tops))}" if tops else ""


# -- resolving what becomes readable ---------------------------------------------------

@record
class Entry:
    """One readable path: what kind, for which distribution (or import name), and why."""

    path: str
    kind: str
    owner: str
    note: str = ""


@record
class Distribution:
    """An installed distribution made readable; ``required_by`` is empty when asked for."""

    name: str
    version: str
    required_by: tuple[str, ...]


@record
class Access:
    """Everything :func:`resolve` found for a set of import names."""

    names: tuple[str, ...]
    entries: tuple[Entry, ...]
    distributions: tuple[Distribution, ...]
    #: Shared folders whose listings the import system caches before lockdown.
    finder_dirs: tuple[str, ...] = ()
    #: Requirements not installed here, as "name (required by X)".
    missing: tuple[str, ...] = ()
    #: Shared libraries the loader will not find, as "soname (needed by X)".
    unresolved: tuple[str, ...] = ()
    #: Names that are part of the standard library (always readable).
    stdlib: tuple[str, ...] = ()

    def paths(self) -> list[str]:
        return list(dict.fromkeys(e.path for e in self.entries))


class _Dist:
    """A distribution being resolved (mutable while :func:`resolve` runs)."""

    def __init__(self, key: str, folder: str, dist: Any) -> None:
        self.dist, self.folder = dist, folder
        meta = dist.metadata
        self.name = meta["Name"] or key
        self.version = meta["Version"] or ""
        self.requires = list(meta.get_all("Requires-Dist") or [])
        self.required_by: list[str] = []
        self.extras: set[str] = set()


def resolve(names: Iterable[str], path: list[str] | None = None) -> Access:
    """What becomes readable when ``names`` (import names) are allowed; see the module docstring."""
    path = list(sys.path if path is None else path)
    tops = tuple(sorted({n.partition(".")[0] for n in names}))
    if not tops:
        return Access((), (), ())  # nothing to look up (and importlib.metadata stays unimported)
    index = _DistIndex(path)
    dists: dict[str, _Dist] = {}
    missing: list[str] = []
    todo: list[tuple[_Dist, str]] = []

    def add(item: tuple[str, str, Any], required_by: str, extras: Iterable[str] = ()) -> None:
        key = item[0]
        entry = dists.get(key)
        if entry is None:
            entry = dists[key] = _Dist(*item)
            todo.append((entry, ""))
        if required_by and required_by not in entry.required_by:
            entry.required_by.append(required_by)
        for extra in set(extras) - entry.extras:
            entry.extras.add(extra)
            todo.append((entry, extra))

    for top in tops:
        for dist in index.providers(top):
            add(dist, "")
    while todo:
        entry, extra = todo.pop(0)
        for requirement in entry.requires:
            wanted = _wanted(requirement, extra)
            if wanted is None:
                continue
            name, extras = wanted
            dep = index.find(name)
            if dep is None:
                missing.append(f"{name} (required by {entry.name})")
            else:
                add(dep, entry.name, extras)

    entries: list[Entry] = []
    finder_dirs: list[str] = []
    objects: dict[str, str] = {}  # ELF candidates -> owner
    for entry in dists.values():
        _grant_distribution(entry, entries, finder_dirs, objects)
    in_stdlib = []
    for top in tops:  # where the import system finds it, if no distribution covered that
        found = locations(top, path)
        if top in sys.builtin_module_names or (found and all(map(_in_stdlib, found))):
            in_stdlib.append(top)
            continue
        for location in found:
            if not _covered(location, entries):
                entries.append(Entry(location, PACKAGE, top, "found on the import path"))
                objects.update((p, top) for p in _walk_objects(location))
    unresolved = _grant_libraries(objects, entries)
    distributions = tuple(Distribution(d.name, d.version, tuple(d.required_by)) for d in dists.values())
    return Access(tops, tuple(entries), distributions, tuple(dict.fromkeys(finder_dirs)),
                  tuple(dict.fromkeys(missing)), unresolved, tuple(in_stdlib))


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _wanted(requirement: str, extra: str) -> tuple[str, set[str]] | None:
    """``(name, extras)`` if ``requirement`` applies here for ``extra`` ('' = none)."""
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        req = Requirement(requirement)
    except InvalidRequirement:
        return None
    if req.marker is not None and not req.marker.evaluate({"extra": extra}):
        return None
    if req.marker is None and extra:
        return None  # unconditional requirements were taken with the base set
    return req.name, set(req.extras)


class _DistIndex:
    """The distributions installed on ``path``, found by listing each directory once."""

    def __init__(self, path: list[str]) -> None:
        import importlib.metadata as md
        import pathlib

        #: (normalized name, metadata folder, Distribution)
        self.dists: list[tuple[str, str, Any]] = []
        for directory in path:
            try:
                names = sorted(os.listdir(directory))
            except OSError:
                continue
            for name in names:
                if name.endswith((".dist-info", ".egg-info")):
                    folder = os.path.join(directory, name)
                    key = _normalize(name.rsplit(".", 1)[0].split("-")[0])
                    self.dists.append((key, folder, md.Distribution.at(pathlib.Path(folder))))
        self._tops: dict[str, set[str]] = {}

    def providers(self, top: str) -> list[tuple[str, str, Any]]:
        out = []
        for item in self.dists:
            if item[1] not in self._tops:
                self._tops[item[1]] = _top_level_names(item[2])
            if top in self._tops[item[1]]:
                out.append(item)
        return out

    def find(self, name: str) -> tuple[str, str, Any] | None:
        key = _normalize(name)
        return next((item for item in self.dists if item[0] == key), None)


def _top_level_names(dist: Any) -> set[str]:
    """The top-level import names a distribution installs."""
    declared = dist.read_text("top_level.txt")
    if declared is not None:
        return {line.strip() for line in declared.splitlines() if line.strip()}
    listing = dist.read_text("RECORD") or dist.read_text("SOURCES.txt") or ""
    names = set()
    suffixes = tuple(importlib.machinery.all_suffixes())
    for line in listing.splitlines():
        first = line.split(",", 1)[0].split("/", 1)
        if len(first) == 2 and first[0].isidentifier():
            names.add(first[0])
        elif first[0].endswith(suffixes):
            stem = first[0].split(".", 1)[0]
            if stem.isidentifier():
                names.add(stem)
    return names


# Installed outside site-packages but never read by an import: scripts and C headers
# (a RECORD names them as ../../../bin/..., ../../../include/...).
_NOT_DATA = ("bin", "Scripts", "include")


def _grant_distribution(entry: _Dist, out: list[Entry], finder_dirs: list[str], objects: dict[str, str]) -> None:
    dist = entry.dist
    files = _installed_files(dist)
    meta_dir = os.path.realpath(entry.folder)
    out.append(Entry(meta_dir, METADATA, entry.name))
    if files is None:  # no RECORD: what the import system finds
        for top in sorted(_top_level_names(dist)):
            for location in locations(top, [os.path.dirname(meta_dir)]):
                out.append(Entry(location, PACKAGE, entry.name, "no file list installed"))
                objects.update((p, entry.name) for p in _walk_objects(location))
        return
    site = os.path.dirname(meta_dir)
    tree: dict[str, Any] = {}
    for f in files:
        parts = [p for p in f.split("/") if p and p != "."]
        if not parts:
            continue
        if parts[0] == "..":
            below = [p for p in parts if p != ".."]
            full = os.path.realpath(os.path.join(site, f))
            listed_link = os.path.islink(os.path.join(site, f))
            if below and below[0] not in _NOT_DATA and not listed_link and os.path.isfile(full):
                out.append(Entry(full, DATA, entry.name))
            continue
        if parts[0].endswith((".dist-info", ".egg-info", ".pth")) or parts[0].startswith("__editable__"):
            continue  # metadata is granted above; .pth files are read only by `site`
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = None
        if ".so" in parts[-1] or parts[-1].endswith(".pyd"):
            objects[os.path.join(site, *parts)] = entry.name
    _grant_tree(site, tree, entry.name, out, finder_dirs, top_level=True)


def _installed_files(dist: Any) -> list[str] | None:
    """The installed paths a distribution lists (relative, '/'-separated), ``None`` if none."""
    import csv

    record = dist.read_text("RECORD")
    if record is not None:
        return [row[0] for row in csv.reader(record.splitlines()) if row]
    files = dist.files  # egg-info: installed-files.txt or SOURCES.txt
    return None if files is None else [str(f).replace(os.sep, "/") for f in files]


def _grant_tree(base: str, tree: dict[str, Any], owner: str, out: list[Entry],
                finder_dirs: list[str], top_level: bool = False) -> None:
    """Grant whole folders this distribution owns; only its own entries in shared ones."""
    for name, sub in sorted(tree.items()):
        full = os.path.join(base, name)
        if os.path.islink(full):
            continue  # a rule would follow it: a listed name never opens something elsewhere
        if sub is None:
            if os.path.exists(full):
                out.append(Entry(full, PACKAGE, owner))
        elif "__init__.py" in sub or (top_level and (name.endswith(".libs") or name.startswith("."))):
            kind = VENDORED if name.endswith(".libs") or name.startswith(".") else PACKAGE
            if os.path.isdir(full):
                out.append(Entry(full, kind, owner))
        else:  # shared (a namespace package, __pycache__, a data folder): look inside
            if os.path.isdir(full):
                if name != "__pycache__":
                    finder_dirs.append(full)
                _grant_tree(full, sub, owner, out, finder_dirs)


def locations(top: str, path: list[str]) -> list[str]:
    """Where ``top`` lives on ``path``, found without importing it (builtins: nowhere)."""
    if top in sys.builtin_module_names:
        return []
    try:
        spec = importlib.machinery.PathFinder.find_spec(top, path)
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    if spec.submodule_search_locations:
        return [os.path.realpath(p) for p in spec.submodule_search_locations if os.path.isdir(p)]
    if spec.origin and os.path.isfile(spec.origin):
        return [os.path.realpath(spec.origin)]
    return []


def _in_stdlib(path: str) -> bool:
    """Inside the standard library directory, and not in a site-packages beneath it."""
    root = os.path.realpath(os.path.dirname(os.__file__)) + os.sep
    return path.startswith(root) and path[len(root):].split(os.sep)[0] not in ("site-packages", "dist-packages")


def _covered(path: str, entries: list[Entry]) -> bool:
    return any(path == e.path or path.startswith(e.path.rstrip(os.sep) + os.sep) for e in entries)


def _walk_objects(location: str) -> list[str]:
    """ELF candidates in a folder (bounded), or the file itself."""
    if os.path.isfile(location):
        return [location] if ".so" in os.path.basename(location) else []
    found, seen = [], 0
    for root, _dirs, files in os.walk(location):
        for name in files:
            seen += 1
            if ".so" in name:
                found.append(os.path.join(root, name))
        if seen > _MAX_WALK:
            break
    return found


def _grant_libraries(objects: dict[str, str], out: list[Entry]) -> tuple[str, ...]:
    """Add the shared libraries ``objects`` need that are not readable already."""
    if not objects:
        return ()
    resolution = _elf.Loader().resolve(sorted(objects))
    owner_of = {os.path.realpath(p): o for p, o in objects.items()}
    needed_by: dict[str, set[str]] = {}
    first: dict[str, _elf.Library] = {}
    for lib in resolution.libraries:
        real = os.path.realpath(lib.path)
        needed_by.setdefault(real, set()).add(os.path.realpath(lib.needed_by))
        first.setdefault(real, lib)

    def owners(path: str, seen: frozenset[str] = frozenset()) -> set[str]:
        if path in owner_of:
            return {owner_of[path]}
        found: set[str] = set()
        for parent in needed_by.get(path, ()):
            if parent not in seen:
                found |= owners(parent, seen | {path})
        return found or {os.path.basename(path)}

    granted = list(out)
    for real, lib in sorted(first.items()):
        if _covered(real, granted):
            continue
        via = "" if lib.via == "system dir" else f", found via {lib.via}"
        entry = Entry(real, LIBRARY, "", f"{lib.soname} for {', '.join(sorted(owners(real)))}{via}")
        out.append(entry)
        granted.append(entry)
    if resolution.needs_cache:
        out.append(Entry(_elf.LOADER_CACHE, LOADER_CACHE, "",
                         "the loader finds some library above only through its cache"))
    return tuple(f"{soname} (needed by {', '.join(sorted(owners(os.path.realpath(by))))})"
                 for soname, by in resolution.missing)


# -- telling a person ------------------------------------------------------------------

def describe(access: Access) -> str:
    """What ``access`` makes readable, grouped by distribution, for ``capbridge check``."""
    lines: list[str] = []
    lines.append(f"allow_imports={access.names!r}: besides the standard library and capbridge itself, "
                 "a sandbox may read (never write):")
    by_owner: dict[str, list[Entry]] = {}
    for e in access.entries:
        by_owner.setdefault(e.owner, []).append(e)
    shown: set[str] = set()

    def block(title: str, owner: str) -> None:
        lines.append("")
        lines.append(title)
        for kind in (PACKAGE, VENDORED, DATA, METADATA):
            label = kind
            for e in by_owner.get(owner, []):
                if e.kind == kind:
                    suffix = os.sep if os.path.isdir(e.path) else ""
                    lines.append(f"  {label:<19} {e.path}{suffix}" + (f"  ({e.note})" if e.note else ""))
                    label = ""
        shown.add(owner)

    for dist in access.distributions:
        if not dist.required_by:
            block(f"{dist.name} {dist.version}  (asked for)", dist.name)
    deps = [d for d in access.distributions if d.required_by]
    if deps:
        lines.append("")
        lines.append("dependencies (from Requires-Dist):")
        for dist in deps:
            block(f"{dist.name} {dist.version}  (required by {', '.join(dist.required_by)})", dist.name)
    for owner in by_owner:
        if owner not in shown and any(e.kind == PACKAGE for e in by_owner[owner]):
            block(f"{owner}  (no installed distribution)", owner)
    libs = [e for e in access.entries if e.kind in (LIBRARY, LOADER_CACHE)]
    if libs:
        lines.append("")
        lines.append("system shared libraries (what the extension modules above load):")
        for e in libs:
            lines.append(f"  {e.path}  ({e.note})")
    if access.stdlib:
        lines.append("")
        lines.append(f"part of the standard library (always readable): {', '.join(access.stdlib)}")
    if access.missing:
        lines.append("")
        lines.append("required but not installed here (nothing to open): " + ", ".join(access.missing))
    if access.unresolved:
        lines.append("")
        lines.append("NOT FOUND by the loader (importing what needs them will fail): " + ", ".join(access.unresolved))
    lines.append("")
    lines.append("Nothing else is opened: the rest of site-packages stays unreadable.")
    return "\n".join(lines)
