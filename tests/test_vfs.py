"""VirtualFS: behaviour, confinement beneath mounts, special files, hard links, quotas."""

from __future__ import annotations

import errno
import os
import stat
import sys
import threading
import time

import pytest

from host_apis import Mount, VirtualFS
from host_apis import _beneath, _common, _filebase

SECRET = b"TOP-SECRET-OUTSIDE"


@pytest.fixture(params=["openat2", "walk"])
def resolver(request):
    if request.param == "openat2" and not _beneath.openat2_available():
        pytest.skip("openat2 not available")
    old = _beneath.use_openat2(request.param == "openat2")
    yield request.param
    _beneath.use_openat2(old)


@pytest.fixture
def tree(tmp_path):
    ro = tmp_path / "ro"
    rw = tmp_path / "rw"
    outside = tmp_path / "outside"
    for d in (ro, rw, outside, ro / "sub"):
        d.mkdir()
    (ro / "a.txt").write_bytes(b"line1\nline2\nline3\n")
    (ro / "sub" / "b.bin").write_bytes(bytes(range(256)))
    (outside / "secret.txt").write_bytes(SECRET)
    return tmp_path


@pytest.fixture
def fs(tree, resolver):
    v = VirtualFS(
        {
            "/data": str(tree / "ro"),
            "/out": Mount(str(tree / "rw"), writable=True),
        }
    )
    yield v
    v.close()


def _never_secret(fs: VirtualFS, vpath: str) -> OSError:
    with pytest.raises(OSError) as info:
        with fs.open(vpath) as f:
            assert SECRET not in f.read()
    return info.value


# ----------------------------------------------------------------------------- basics


def test_read_and_file_protocol(fs):
    with fs.open("/data/a.txt") as f:
        assert f.name == "/data/a.txt" and f.mode == "rb" and not f.closed
        assert f.readline() == b"line1\n"
        assert f.tell() == 6
        assert list(f) == [b"line2\n", b"line3\n"]
        f.seek(0)
        assert f.readlines() == [b"line1\n", b"line2\n", b"line3\n"]
        f.seek(-6, 2)
        assert f.read() == b"line3\n"
        assert f.read(10) == b""
        assert f.readable() and not f.writable() and f.seekable()
        with pytest.raises(OSError):
            f.write(b"x")
    assert f.closed
    f.close()  # idempotent
    with pytest.raises(ValueError):
        f.read()


def test_listdir_stat_scandir(fs, tree):
    assert fs.listdir("/") == ["data", "out"]
    assert fs.listdir("/data") == ["a.txt", "sub"]
    assert fs.listdir("//data/./sub/..") == ["a.txt", "sub"]
    st = fs.stat("/data/a.txt")
    assert isinstance(st, tuple) and len(st) == 10
    res = os.stat_result(st)
    assert stat.S_ISREG(res.st_mode) and res.st_size == 18
    assert res.st_mode & 0o222 == 0  # read-only mount shows no write bits
    assert res.st_uid == 0 and res.st_dev == 1
    assert stat.S_ISDIR(fs.stat("/")[0]) and stat.S_ISDIR(fs.stat("/data")[0])
    assert fs.exists("/data/a.txt") and fs.isfile("/data/a.txt") and not fs.isdir("/data/a.txt")
    assert fs.isdir("/data/sub") and not fs.exists("/data/nope") and not fs.exists("/nope")
    assert fs.getsize("/data/sub/b.bin") == 256
    entries = fs.scandir("/data")
    assert [(n, d, f) for n, d, f, _ in entries] == [("a.txt", False, True), ("sub", True, False)]
    assert [e[0] for e in fs.scandir("/")] == ["data", "out"]


def test_write_rename_remove(fs, tree):
    with fs.open("/out/new.bin", "wb") as f:
        assert f.write(b"hello") == 5
        f.write(bytearray(b" world"))
    assert (tree / "rw" / "new.bin").read_bytes() == b"hello world"
    with fs.open("/out/new.bin", "ab") as f:
        f.write(b"!")
    with fs.open("/out/new.bin", "r+b") as f:
        f.seek(0)
        f.write(b"J")
        f.truncate(5)
    assert (tree / "rw" / "new.bin").read_bytes() == b"Jello"
    with pytest.raises(FileExistsError):
        fs.open("/out/new.bin", "xb")
    fs.mkdir("/out/d")
    with pytest.raises(FileExistsError):
        fs.mkdir("/out/d")
    fs.rename("/out/new.bin", "/out/d/moved.bin")
    assert fs.listdir("/out/d") == ["moved.bin"]
    with pytest.raises(IsADirectoryError):
        fs.open("/out/d", "rb")
    fs.remove("/out/d/moved.bin")
    fs.rmdir("/out/d")
    assert fs.listdir("/out") == []
    with fs.open("/out/w.bin", "wb") as f:
        f.write(b"old content")
    with fs.open("/out/w.bin", "wb") as f:
        f.write(b"new")
    assert (tree / "rw" / "w.bin").read_bytes() == b"new"


def test_text_modes_refused_on_capability(fs):
    with pytest.raises(ValueError):
        fs.open("/data/a.txt", "rt")
    with pytest.raises(ValueError):
        fs.open("/data/a.txt", "rw")


def test_read_only_and_unmapped_errors(fs, tree):
    for call in (
        lambda: fs.open("/data/new", "wb"),
        lambda: fs.open("/data/a.txt", "r+b"),
        lambda: fs.mkdir("/data/x"),
        lambda: fs.remove("/data/a.txt"),
        lambda: fs.rename("/data/a.txt", "/data/b.txt"),
        lambda: fs.open("/newfile", "wb"),
        lambda: fs.mkdir("/newdir"),
    ):
        with pytest.raises(PermissionError) as info:
            call()
        assert info.value.errno == errno.EROFS
    assert (tree / "ro" / "a.txt").exists()
    with pytest.raises(FileNotFoundError):
        fs.open("/nope/x")
    with pytest.raises(FileNotFoundError):
        fs.listdir("/nope")
    with pytest.raises(PermissionError):
        fs.remove("/out")  # a mount point
    with pytest.raises(OSError) as info:
        fs.rename("/out/x", "/data/x")
    assert info.value.errno in (errno.EXDEV, errno.EROFS)


def test_errors_name_virtual_paths_only(fs, tree):
    with pytest.raises(FileNotFoundError) as info:
        fs.open("/data/sub/missing")
    assert info.value.filename == "/data/sub/missing"
    assert str(tree) not in str(info.value)


def test_read_size_capped(fs, tree, monkeypatch):
    (tree / "ro" / "big").write_bytes(b"x" * 100)
    monkeypatch.setattr(_common, "MAX_READ", 10)
    monkeypatch.setattr(_filebase, "MAX_READ", 10)
    with fs.open("/data/big") as f:
        assert len(f.read(1000)) == 10
        with pytest.raises(OSError) as info:
            f.read()
        assert info.value.errno == errno.EFBIG
        assert f.tell() == 10  # a refused read-all does not move the position
        f.seek(95)
        assert f.read() == b"xxxxx"


# ----------------------------------------------------------------------------- escapes


def test_dotdot_never_leaves(fs, tree):
    for p in ("/data/../../outside/secret.txt", "/../outside/secret.txt", "/data/sub/../../../etc/passwd"):
        with pytest.raises(OSError):
            fs.open(p)
    with pytest.raises(PermissionError):
        fs.stat("/..")
    # lexically inside is fine
    assert fs.open("/data/sub/../a.txt").read(5) == b"line1"


def test_symlinks_refused(fs, tree):
    ro = tree / "ro"
    os.symlink(str(tree / "outside" / "secret.txt"), ro / "abs_link")
    os.symlink("../outside/secret.txt", ro / "rel_link")
    os.symlink(str(tree / "outside"), ro / "dir_link")
    os.symlink("../outside", ro / "rel_dir_link")
    os.symlink("/etc/passwd", ro / "passwd")
    os.symlink("a.txt", ro / "inner_link")  # stays inside: still not followed
    # the attacks are real: on the host these links do reach outside
    assert (ro / "abs_link").read_bytes() == SECRET
    assert (ro / "rel_dir_link" / "secret.txt").read_bytes() == SECRET
    for p in (
        "/data/abs_link",
        "/data/rel_link",
        "/data/dir_link/secret.txt",
        "/data/rel_dir_link/secret.txt",
        "/data/passwd",
        "/data/inner_link",
    ):
        err = _never_secret(fs, p)
        assert err.errno in (errno.ELOOP, errno.ENOTDIR, errno.EXDEV, errno.EACCES), p
    for p in ("/data/dir_link", "/data/rel_dir_link"):
        with pytest.raises(OSError):
            fs.listdir(p)
        with pytest.raises(OSError):
            fs.stat(p + "/secret.txt")
    assert stat.S_ISLNK(fs.stat("/data/abs_link")[0])  # the link itself, not its target
    assert not fs.isfile("/data/passwd")
    flags = {n: (d, f) for n, d, f, _ in fs.scandir("/data")}
    assert flags["dir_link"] == (False, False) and flags["abs_link"] == (False, False)


def test_write_through_symlink_refused(fs, tree):
    rw = tree / "rw"
    os.symlink(str(tree / "outside" / "secret.txt"), rw / "link")
    os.symlink(str(tree / "outside"), rw / "dlink")
    for p in ("/out/link", "/out/dlink/secret.txt", "/out/dlink/new.txt"):
        for mode in ("wb", "ab", "r+b"):
            with pytest.raises(OSError):
                fs.open(p, mode)
    with pytest.raises(OSError):
        fs.mkdir("/out/dlink/newdir")
    assert (tree / "outside" / "secret.txt").read_bytes() == SECRET
    assert sorted(os.listdir(tree / "outside")) == ["secret.txt"]
    fs.remove("/out/link")  # removes the link, never the target
    assert (tree / "outside" / "secret.txt").read_bytes() == SECRET


def test_directory_swapped_for_symlink_race(fs, tree):
    """A thread flips a directory and a symlink to outside; opens never reach outside."""
    ro = tree / "ro"
    flip = ro / "flip"
    real = ro / "real"
    real.mkdir()
    (real / "secret.txt").write_bytes(b"inside")
    stop = threading.Event()
    flips = 0

    def flipper() -> None:
        nonlocal flips
        while not stop.is_set():
            os.rename(real, flip)
            os.rename(flip, real)
            os.symlink(str(tree / "outside"), flip)
            os.unlink(flip)
            flips += 1

    t = threading.Thread(target=flipper)
    t.start()
    inside = refused = 0
    deadline = time.monotonic() + 60
    try:
        while (flips < 1000 or inside == 0 or refused == 0) and time.monotonic() < deadline:
            try:
                with fs.open("/data/flip/secret.txt") as f:
                    data = f.read()
            except OSError:
                refused += 1
                continue
            assert data != SECRET, "escaped through a swapped symlink"
            assert data == b"inside"
            inside += 1
    finally:
        stop.set()
        t.join()
    assert flips >= 1000 and inside > 0 and refused > 0


def test_file_swapped_for_symlink_race(fs, tree):
    rw = tree / "rw"
    target = tree / "outside" / "secret.txt"
    stop = threading.Event()
    flips = 0

    def flipper() -> None:
        nonlocal flips
        while not stop.is_set():
            (rw / "tmpf").write_bytes(b"inside")
            os.replace(rw / "tmpf", rw / "f")
            os.symlink(str(target), rw / "tmpl")
            os.replace(rw / "tmpl", rw / "f")
            flips += 1

    t = threading.Thread(target=flipper)
    t.start()
    ok = 0
    try:
        for _ in range(1000):
            for mode in ("rb", "r+b"):
                try:
                    with fs.open("/out/f", mode) as f:
                        data = f.read()
                        if mode == "r+b":
                            f.seek(0)
                            f.write(b"X")
                except OSError:
                    continue
                assert data != SECRET
                ok += 1
    finally:
        stop.set()
        t.join()
    assert target.read_bytes() == SECRET
    assert flips > 0 and ok > 0


def test_fifo_does_not_hang(fs, tree):
    os.mkfifo(tree / "ro" / "fifo")
    os.mkfifo(tree / "rw" / "fifo")
    results: list[BaseException] = []

    def attempt() -> None:
        for p, mode in (("/data/fifo", "rb"), ("/out/fifo", "wb"), ("/out/fifo", "r+b"), ("/out/fifo", "ab")):
            try:
                fs.open(p, mode)
            except OSError as e:
                results.append(e)

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "opening a FIFO blocked"
    assert len(results) == 4 and all(isinstance(e, PermissionError) for e in results)


def test_fifo_swapped_in_after_check_does_not_hang(fs, tree, monkeypatch):
    """Even if the pre-open look saw a regular file, the open cannot block on a FIFO."""
    os.mkfifo(tree / "ro" / "fifo")
    regular = os.stat(tree / "ro" / "a.txt")
    monkeypatch.setattr(VirtualFS, "_lstat", lambda self, m, rest, norm: regular)
    done: list[BaseException] = []

    def attempt() -> None:
        try:
            fs.open("/data/fifo")
        except OSError as e:
            done.append(e)

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive() and len(done) == 1 and isinstance(done[0], PermissionError)


def test_device_nodes_refused(tree, resolver):
    v = VirtualFS({"/dev": "/dev"})
    try:
        assert "null" in v.listdir("/dev")
        for name in ("null", "zero", "urandom", "tty"):
            if not os.path.exists(f"/dev/{name}"):
                continue
            with pytest.raises(PermissionError):
                v.open(f"/dev/{name}")
    finally:
        v.close()


def test_mknod_device_in_writable_mount_refused(fs, tree):
    try:
        os.mknod(tree / "rw" / "mynull", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except (PermissionError, OSError):
        pytest.skip("cannot create device nodes here")
    for mode in ("rb", "wb", "r+b"):
        with pytest.raises(PermissionError):
            fs.open("/out/mynull", mode)


def test_hard_link_to_outside_file(tree, resolver):
    secret = tree / "outside" / "secret.txt"
    os.link(secret, tree / "rw" / "hl")
    os.link(secret, tree / "ro" / "hl")
    assert os.stat(tree / "rw" / "hl").st_nlink == 3  # the attack is real
    strict = VirtualFS({"/out": Mount(str(tree / "rw"), writable=True), "/data": str(tree / "ro")})
    lenient = VirtualFS({"/data": Mount(str(tree / "ro"), allow_hard_links=True),
                         "/out": Mount(str(tree / "rw"), writable=True, allow_hard_links=True)})
    try:
        for mode in ("wb", "ab", "r+b", "rb"):
            with pytest.raises(PermissionError):
                strict.open("/out/hl", mode)
        with pytest.raises(PermissionError):
            strict.open("/data/hl")
        for mode in ("wb", "ab", "r+b"):
            with pytest.raises(PermissionError):
                lenient.open("/out/hl", mode)
        assert lenient.open("/data/hl").read() == SECRET  # documented opt-in
    finally:
        strict.close()
        lenient.close()
    assert secret.read_bytes() == SECRET  # "wb" did not truncate it


def test_mount_root_swap_after_construction(tree, resolver):
    v = VirtualFS({"/data": str(tree / "ro")})
    try:
        os.rename(tree / "ro", tree / "ro_moved")
        os.symlink(str(tree / "outside"), tree / "ro")
        assert v.listdir("/data") == ["a.txt", "sub"]  # still the original directory
        with pytest.raises(FileNotFoundError):
            v.open("/data/secret.txt")
    finally:
        v.close()


# ----------------------------------------------------------------------------- quotas


def test_quota_bytes(tree, resolver):
    v = VirtualFS({"/out": Mount(str(tree / "rw"), writable=True, max_bytes=10)})
    try:
        with v.open("/out/a", "wb") as f:
            f.write(b"123456")
            with pytest.raises(OSError) as info:
                f.write(b"12345")
            assert info.value.errno == errno.EDQUOT
            f.write(b"1234")
        assert (tree / "rw" / "a").read_bytes() == b"1234561234"
        with v.open("/out/a", "r+b") as f:
            with pytest.raises(OSError):
                f.truncate(1000)  # growth by truncate counts too
        assert v.usage("/out")["bytes_written"] == 10
    finally:
        v.close()


def test_quota_files(tree, resolver):
    v = VirtualFS({"/out": Mount(str(tree / "rw"), writable=True, max_files=3)})
    try:
        v.open("/out/a", "wb").close()
        with pytest.raises(FileNotFoundError):
            v.open("/out/missing/x", "wb")  # failed creations are not charged
        v.mkdir("/out/d")
        v.open("/out/d/b", "wb").close()
        v.open("/out/a", "wb").close()  # reopening is not creating
        with pytest.raises(OSError) as info:
            v.open("/out/c", "wb")
        assert info.value.errno == errno.EDQUOT
        with pytest.raises(OSError):
            v.mkdir("/out/e")
        assert sorted(os.listdir(tree / "rw")) == ["a", "d"]
        assert v.usage("/out")["files_created"] == 3
    finally:
        v.close()


def test_constructor_validation(tree):
    with pytest.raises(ValueError):
        VirtualFS({})
    with pytest.raises(ValueError):
        VirtualFS({"relative": str(tree / "ro")})
    with pytest.raises(FileNotFoundError):
        VirtualFS({"/x": str(tree / "does-not-exist")})
    with pytest.raises(ValueError):
        Mount(str(tree), max_bytes=-1) and VirtualFS({"/x": Mount(str(tree), max_bytes=-1)})


def test_nested_mounts(tree, resolver):
    v = VirtualFS({"/a/b": str(tree / "ro"), "/a/c": Mount(str(tree / "rw"), writable=True)})
    try:
        assert v.listdir("/") == ["a"]
        assert v.listdir("/a") == ["b", "c"]
        assert v.open("/a/b/a.txt").read(5) == b"line1"
        with pytest.raises(PermissionError):
            v.open("/a/x", "wb")
    finally:
        v.close()


HOLE = 200 * 1024 * 1024


def test_quota_charges_the_hole_a_write_past_the_end_leaves(tree, resolver):
    v = VirtualFS({"/out": Mount(str(tree / "rw"), writable=True, max_bytes=65536)})
    try:
        with v.open("/out/sparse", "wb") as f:
            f.seek(HOLE)
            with pytest.raises(OSError) as info:
                f.write(b"x")
            assert info.value.errno == errno.EDQUOT
        st = os.stat(tree / "rw" / "sparse")
        assert st.st_size == 0 and st.st_blocks == 0  # nothing was allocated
        assert v.usage("/out")["bytes_written"] == 0
        with v.open("/out/sparse", "r+b") as f:  # control: a hole within the quota
            f.seek(1000)
            f.write(b"x")
        assert v.usage("/out")["bytes_written"] == 1001
        with v.open("/out/sparse", "ab") as f:  # appending leaves no hole
            f.seek(50_000)
            f.write(b"y")
        assert v.usage("/out")["bytes_written"] == 1002
        with v.open("/out/sparse", "r+b") as f:
            with pytest.raises(OSError) as info:
                f.truncate(HOLE)  # growth by truncate counts the same way
            assert info.value.errno == errno.EDQUOT
            f.truncate(2000)
        assert os.stat(tree / "rw" / "sparse").st_size == 2000
        assert v.usage("/out")["bytes_written"] == 2000
    finally:
        v.close()


@pytest.mark.parametrize("kind", ["VirtualFS", "MemoryFS"])
def test_sandbox_cannot_get_past_a_file_quota(tree, kind):
    """The attack as sandbox code through the file shim (open/seek/write)."""
    sys.path.insert(0, os.path.dirname(__file__))
    from conftest import make_sandbox

    from host_apis import MemoryFS

    if kind == "VirtualFS":
        fs = VirtualFS({"/out": Mount(str(tree / "rw"), writable=True, max_bytes=65536)})
    else:
        fs = MemoryFS({"/out/keep": b""}, max_bytes=65536)
    sb = make_sandbox({"fs": fs})
    try:
        sb.exec(f"import errno\nf = open('/out/big', 'wb')\nf.seek({HOLE})\n"
                "try:\n    f.write(b'x')\n    f.flush()\n    verdict = 'written'\n"
                "except OSError as exc:\n    verdict = errno.errorcode[exc.errno]\n"
                "try:\n    f.close()\nexcept OSError:\n    pass\n"
                "size = __import__('os').stat('/out/big').st_size")
        assert sb.eval("verdict") == "EDQUOT"
        assert sb.eval("size") == 0
        # Overwriting the start of a full file must not make room for more.
        sb.exec("f = open('/out/full', 'wb', buffering=0)\nf.write(b'a' * 60000)\nf.seek(0)\nf.write(b'b')\n"
                "f.seek(0, 2)\ntry:\n    f.write(b'c' * 60000)\n    verdict = 'written'\n"
                "except OSError as exc:\n    verdict = errno.errorcode[exc.errno]\n"
                "f.close()\nsize = __import__('os').stat('/out/full').st_size")
        assert sb.eval("verdict") == "EDQUOT"
        assert sb.eval("size") == 60000
    finally:
        sb.close()
        if kind == "VirtualFS":
            fs.close()
