"""Finding shared libraries as the dynamic loader does (sandbox_vm._elf).

Tiny libraries are built with gcc in a temporary directory; without gcc those tests
are skipped (they say so). The loader cache parser is checked against a cache built
here and against ``ldconfig -p`` on the real one.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys

import pytest

from sandbox_vm import _elf

GCC = shutil.which("gcc")
needs_gcc = pytest.mark.skipif(GCC is None, reason="gcc is not installed: cannot build test libraries")


def build(out, source: str, *flags: str) -> str:
    """Compile ``source`` (C) into the shared library ``out``; returns its path."""
    src = str(out) + ".c"
    with open(src, "w") as f:
        f.write(source)
    subprocess.run([GCC, "-shared", "-fPIC", "-o", str(out), src, *flags], check=True, capture_output=True)
    return str(out)


@pytest.fixture
def tmp_path(tmp_path):
    return type(tmp_path)(os.path.realpath(tmp_path))


@pytest.fixture
def tree(tmp_path):
    """pkg/_ext.so -> libdep.so (pkg.libs, by RPATH $ORIGIN/../pkg.libs) -> libleaf.so (by $ORIGIN)."""
    libs = tmp_path / "pkg.libs"
    pkg = tmp_path / "pkg"
    libs.mkdir()
    pkg.mkdir()
    build(libs / "libleaf.so", "int leaf(void) { return 1; }\n")
    build(libs / "libdep.so", "int leaf(void); int dep(void) { return leaf(); }\n",
          f"-L{libs}", "-lleaf", "-Wl,--disable-new-dtags", "-Wl,-rpath,$ORIGIN")
    ext = build(pkg / "_ext.so", "int dep(void); int ext(void) { return dep(); }\n",
                f"-L{libs}", "-ldep", "-Wl,--disable-new-dtags", "-Wl,-rpath,$ORIGIN/../pkg.libs")
    return tmp_path, ext


@needs_gcc
def test_read_elf_gives_needed_and_rpath(tree) -> None:
    _, ext = tree
    info = _elf.read_elf(ext)
    assert info.needed == ("libdep.so",)
    assert info.rpath == ("$ORIGIN/../pkg.libs",) and info.runpath == ()
    assert info.machine == _elf.read_elf(sys.executable).machine


def test_read_elf_refuses_what_is_not_elf(tmp_path) -> None:
    junk = tmp_path / "junk.so"
    junk.write_bytes(b"\x7fELF\x02\x01" + b"\xff" * 58)  # a header pointing nowhere
    assert _elf.read_elf(str(junk)) is None
    text = tmp_path / "text.so"
    text.write_text("not an ELF file")
    assert _elf.read_elf(str(text)) is None
    assert _elf.read_elf(str(tmp_path / "missing.so")) is None


@needs_gcc
def test_rpath_with_origin_is_followed_transitively(tree) -> None:
    root, ext = tree
    result = _elf.Loader(dirs=[]).resolve([ext])
    by_name = {lib.soname: lib for lib in result.libraries}
    assert os.path.realpath(by_name["libdep.so"].path) == str(root / "pkg.libs" / "libdep.so")
    assert by_name["libdep.so"].via == "rpath"
    # libleaf.so is found through libdep.so's own RPATH ($ORIGIN = pkg.libs)
    assert os.path.realpath(by_name["libleaf.so"].path) == str(root / "pkg.libs" / "libleaf.so")
    assert by_name["libleaf.so"].via == "rpath"


@needs_gcc
def test_runpath_hides_the_loaders_rpath(tmp_path) -> None:
    """A library with DT_RUNPATH does not search the RPATH of what loaded it (as ld.so)."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    build(a / "libleaf.so", "int leaf(void) { return 1; }\n")
    build(b / "libmid.so", "int leaf(void); int mid(void) { return leaf(); }\n",
          f"-L{a}", "-lleaf", "-Wl,--enable-new-dtags", "-Wl,-rpath,/nonexistent")
    top_rpath = build(tmp_path / "top_rpath.so", "int mid(void); int top(void) { return mid(); }\n",
                      f"-L{b}", "-lmid", "-Wl,--disable-new-dtags", f"-Wl,-rpath,{b}:{a}")
    result = _elf.Loader(dirs=[]).resolve([top_rpath])
    assert any(lib.soname == "libmid.so" for lib in result.libraries)
    assert ("libleaf.so", os.path.realpath(b / "libmid.so")) in {(n, os.path.realpath(p)) for n, p in result.missing}

    # Without a RUNPATH of its own, the middle library inherits the top one's RPATH.
    build(b / "libmid.so", "int leaf(void); int mid(void) { return leaf(); }\n", f"-L{a}", "-lleaf")
    result = _elf.Loader(dirs=[]).resolve([top_rpath])
    assert any(lib.soname == "libleaf.so" and lib.via == "rpath" for lib in result.libraries)


def system_lib(tmp_path, *subdirs: str) -> tuple:
    """``system/libsys.so`` (and copies in ``system/<subdir>``), and ``top.so`` needing it."""
    system = tmp_path / "system"
    for sub in ("", *subdirs):
        (system / sub).mkdir(parents=True, exist_ok=True)
        build(system / sub / "libsys.so", "int s(void) { return 1; }\n")
    top = build(tmp_path / "top.so", "int s(void); int t(void) { return s(); }\n", f"-L{system}", "-lsys")
    return system, top


@needs_gcc
def test_system_dirs_and_wrong_architecture(tmp_path) -> None:
    system, top = system_lib(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    result = _elf.Loader(dirs=[str(other), str(system)], cache=str(tmp_path / "none")).resolve([top])
    lib = next(lib for lib in result.libraries if lib.soname == "libsys.so")
    assert lib.via == "system dir" and os.path.realpath(lib.path) == str(system / "libsys.so")
    # A library of another machine type in an earlier directory is skipped, as ld.so does.
    data = bytearray((system / "libsys.so").read_bytes())
    struct.pack_into("<H", data, 0x12, 0xB7 if data[0x12] != 0xB7 else 0x3E)
    (other / "libsys.so").write_bytes(bytes(data))
    result = _elf.Loader(dirs=[str(other), str(system)], cache=str(tmp_path / "none")).resolve([top])
    paths = {os.path.realpath(lib.path) for lib in result.libraries if lib.soname == "libsys.so"}
    assert paths == {str(system / "libsys.so")}
    assert not result.needs_cache


@needs_gcc
def test_glibc_hwcaps_variants_are_included(tmp_path) -> None:
    system, top = system_lib(tmp_path, "glibc-hwcaps/x86-64-v3")
    result = _elf.Loader(dirs=[str(system)], cache=str(tmp_path / "none")).resolve([top])
    assert {os.path.realpath(p) for p in result.paths()} >= {
        str(system / "libsys.so"), str(system / "glibc-hwcaps" / "x86-64-v3" / "libsys.so")}


def make_cache(entries: list[tuple[str, str]], *, old_format: bool = False) -> bytes:
    """A glibc loader cache (``glibc-ld.so.cache1.1``) listing ``(soname, path)``."""
    strings = bytearray()
    offsets = []
    header = 48 + 24 * len(entries)
    for name, path in entries:
        offsets.append((header + len(strings), header + len(strings) + len(name) + 1))
        strings += name.encode() + b"\0" + path.encode() + b"\0"
    new = bytearray(b"glibc-ld.so.cache1.1")
    new += struct.pack("<IIB3xI3I", len(entries), len(strings), 0, 0, 0, 0, 0)
    for key, value in offsets:
        new += struct.pack("<iIIIQ", 0x0303, key, value, 0, 0)
    new += strings
    if not old_format:
        return bytes(new)
    old = bytearray(b"ld.so-1.7.0\0") + struct.pack("<I", 0)  # no old-format entries
    old += b"\0" * (-len(old) % 8)
    return bytes(old + new)


@needs_gcc
@pytest.mark.parametrize("old_format", [False, True])
def test_loader_cache_is_read_and_granted_only_when_needed(tmp_path, old_format) -> None:
    hidden, system = tmp_path / "hidden", tmp_path / "system"
    hidden.mkdir()
    system.mkdir()
    build(hidden / "libhidden.so", "int h(void) { return 1; }\n")
    build(system / "libsys.so", "int s(void) { return 1; }\n")
    top = build(tmp_path / "top.so", "int h(void); int s(void); int t(void) { return h() + s(); }\n",
                f"-L{hidden}", f"-L{system}", "-lhidden", "-lsys")
    cache = tmp_path / "ld.so.cache"
    cache.write_bytes(make_cache([("libhidden.so", str(hidden / "libhidden.so")),
                                  ("libsys.so", str(system / "libsys.so"))], old_format=old_format))
    assert _elf.read_loader_cache(str(cache))["libhidden.so"] == [str(hidden / "libhidden.so")]
    result = _elf.Loader(dirs=[str(system)], cache=str(cache)).resolve([top])
    vias = {lib.soname: lib.via for lib in result.libraries}
    assert vias == {**vias, "libhidden.so": "loader cache", "libsys.so": "system dir"}
    assert result.needs_cache  # libhidden.so is found only through the cache
    cache.write_bytes(make_cache([("libsys.so", str(system / "libsys.so"))]))
    result = _elf.Loader(dirs=[str(system), str(hidden)], cache=str(cache)).resolve([top])
    assert not result.needs_cache  # the system directories find everything the cache does


def test_loader_cache_matches_ldconfig() -> None:
    ldconfig = shutil.which("ldconfig") or ("/sbin/ldconfig" if os.path.exists("/sbin/ldconfig") else None)
    if ldconfig is None or not os.path.exists(_elf.LOADER_CACHE):
        pytest.skip("no ldconfig or no /etc/ld.so.cache on this machine")
    listing = subprocess.run([ldconfig, "-p"], capture_output=True, text=True).stdout
    expected = {}
    for line in listing.splitlines():
        name, arrow, path = line.strip().partition(" => ")
        if not arrow:
            continue
        expected.setdefault(name.split(" (")[0], set()).add(path)
    parsed = _elf.read_loader_cache()
    assert parsed and {k: set(v) for k, v in parsed.items()} == expected


def test_truncated_cache_reads_as_empty(tmp_path) -> None:
    cache = tmp_path / "c"
    cache.write_bytes(make_cache([("libx.so", "/x/libx.so")])[:60])
    assert _elf.read_loader_cache(str(cache)) == {}
    assert _elf.read_loader_cache(str(tmp_path / "absent")) == {}


def test_real_extension_modules_resolve_completely() -> None:
    """Every library the interpreter's own extension modules need is found."""
    dynload = [p for p in sys.path if p.endswith("lib-dynload")]
    objects = [os.path.join(d, e) for d in dynload for e in os.listdir(d) if e.endswith(".so")]
    result = _elf.Loader().resolve(objects)
    assert not result.missing, result.missing
    assert any(os.path.basename(p).startswith("libc.so") for p in result.paths())


def test_realpath_matches_os_path_realpath(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "lib.so.1").write_bytes(b"")
    (tmp_path / "linkdir").symlink_to(tmp_path / "real")
    (tmp_path / "real" / "lib.so").symlink_to("lib.so.1")
    (tmp_path / "real" / "up").symlink_to("..")
    dirs: dict[str, str] = {}
    for rel in ("real/lib.so.1", "linkdir/lib.so.1", "linkdir/lib.so", "real/up", "linkdir/missing", "real/."):
        p = str(tmp_path / rel)
        assert _elf._realpath(p, dirs) == os.path.realpath(p), rel
