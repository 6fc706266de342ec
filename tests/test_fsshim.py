"""The in-sandbox file shim, exercised in-process (always uninstalled afterwards)."""

from __future__ import annotations

import builtins
import csv
import errno
import io
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from host_apis import MemoryFS, Mount, VirtualFS
from sandbox_vm import _fsshim


class Counting:
    """Wraps a file-system capability and counts calls, like a proxy would see them."""

    def __init__(self, fs):
        self._fs = fs
        self.calls: list[str] = []

    def __getattr__(self, name):
        target = getattr(self._fs, name)

        def call(*args, **kwargs):
            self.calls.append(name)
            result = target(*args, **kwargs)
            if name == "open":
                return CountingFile(result, self.calls)
            return result

        return call


class CountingFile:
    def __init__(self, f, calls):
        self._f = f
        self._calls = calls

    def __getattr__(self, name):
        target = getattr(self._f, name)
        if not callable(target):
            return target

        def call(*args, **kwargs):
            self._calls.append("file." + name)
            return target(*args, **kwargs)

        return call


@pytest.fixture
def shim():
    originals = (builtins.open, io.open, os.stat, os.listdir, os.getcwd, os.path.exists, pathlib.Path.touch)
    installed: list = []

    def do_install(fs, **kw):
        _fsshim.install(fs, **kw)
        installed.append(fs)

    try:
        yield do_install
    finally:
        _fsshim.uninstall()
    assert (builtins.open, io.open, os.stat, os.listdir, os.getcwd, os.path.exists, pathlib.Path.touch) == originals
    assert not _fsshim.installed()


def test_open_text_and_binary(shim):
    mem = MemoryFS({"/data/in.txt": "héllo\nwörld\n"})
    shim(mem)
    with open("/data/in.txt", encoding="utf-8") as f:
        assert isinstance(f, io.TextIOWrapper)
        assert f.name == "/data/in.txt" and f.mode == "r"
        assert f.readline() == "héllo\n"
        assert list(f) == ["wörld\n"]
    with open("/data/in.txt", "rb") as f:
        assert isinstance(f, io.BufferedReader)
        assert f.read() == "héllo\nwörld\n".encode()
    with open("/data/out.txt", "w", encoding="utf-8", newline="\r\n") as f:
        f.write("a\nb\n")
    assert mem.read_bytes("/data/out.txt") == b"a\r\nb\r\n"
    with open("/data/out.txt", "a") as f:
        f.write("c")
    with open("/data/out.txt", newline="") as f:
        assert f.read() == "a\r\nb\r\nc"
    with open("/data/out.txt") as f:
        assert f.read() == "a\nb\nc"
    with io.open("/data/bin", "w+b") as f:
        assert isinstance(f, io.BufferedRandom)
        f.write(b"0123456789")
        f.seek(3)
        assert f.read(3) == b"345"
        f.seek(0)
        f.write(b"AB")
        f.truncate(5)
    assert mem.read_bytes("/data/bin") == b"AB234"
    raw = open("/data/bin", "rb", buffering=0)
    assert isinstance(raw, _fsshim.RemoteRawIO) and raw.read(2) == b"AB"
    raw.close()
    with pytest.raises(FileExistsError):
        open("/data/bin", "x")
    with pytest.raises(ValueError):
        open("/data/bin", "rt+b")
    with pytest.raises(ValueError):
        open("/data/bin", "rb", encoding="utf-8")
    with pytest.raises(ValueError):
        open("/data/bin", "r", buffering=0)
    with pytest.raises(io.UnsupportedOperation):
        open("/data/bin", "rb").fileno()


def test_errors_are_the_usual_types(shim):
    mem = MemoryFS({"/d/f": b"x"})
    shim(mem)
    with pytest.raises(FileNotFoundError):
        open("/nope")
    with pytest.raises(IsADirectoryError):
        open("/d")
    with pytest.raises(NotADirectoryError):
        os.listdir("/d/f")
    with pytest.raises(FileNotFoundError):
        os.stat("/d/missing")
    with pytest.raises(FileExistsError):
        os.mkdir("/d")
    with pytest.raises(OSError) as info:
        os.rmdir("/d")
    assert info.value.errno == errno.ENOTEMPTY


def test_read_only_fs_gives_permission_error(shim):
    shim(MemoryFS({"/a": "x"}, read_only=True))
    with pytest.raises(PermissionError):
        open("/a", "w")
    with pytest.raises(PermissionError):
        pathlib.Path("/b").write_text("y")
    assert open("/a").read() == "x"


def test_buffers_cross_not_lines(shim):
    mem = MemoryFS({"/big.txt": "".join(f"line {i}\n" for i in range(20000))})
    counting = Counting(mem)
    shim(counting)
    with open("/big.txt") as f:
        n = sum(1 for _ in f)
    assert n == 20000
    reads = counting.calls.count("file.read")
    assert reads <= 5, counting.calls  # ~170 KB in 64 KiB buffers, not 20000 lines
    counting.calls.clear()
    with open("/big.txt") as f:
        assert len(f.read()) == mem.getsize("/big.txt")
    assert counting.calls.count("file.read") <= 3


def test_os_functions(shim):
    mem = MemoryFS({"/data/a.txt": "A", "/data/sub/b.txt": "BB"})
    shim(mem)
    assert os.listdir("/data") == ["a.txt", "sub"]
    assert os.listdir(b"/data") == [b"a.txt", b"sub"]
    st = os.stat("/data/sub/b.txt")
    assert isinstance(st, os.stat_result) and st.st_size == 2 and st.st_mtime > 0
    assert st.st_mtime_ns > 0 and os.lstat("/data").st_mode & 0o040000
    assert os.path.exists("/data/a.txt") and not os.path.exists("/data/zz")
    assert os.path.isfile("/data/a.txt") and os.path.isdir("/data/sub")
    assert os.path.getsize("/data/sub/b.txt") == 2
    with os.scandir("/data") as it:
        entries = {e.name: (e.is_dir(), e.is_file(), e.path) for e in it}
    assert entries == {"a.txt": (False, True, "/data/a.txt"), "sub": (True, False, "/data/sub")}
    walked = [(top, sorted(dirs), sorted(files)) for top, dirs, files in os.walk("/data")]
    assert walked == [("/data", ["sub"], ["a.txt"]), ("/data/sub", [], ["b.txt"])]
    os.makedirs("/x/y/z", exist_ok=True)
    assert mem.isdir("/x/y/z")
    os.rename("/data/a.txt", "/x/a.txt")
    os.replace("/x/a.txt", "/x/y/a.txt")
    os.remove("/x/y/a.txt")
    os.unlink("/data/sub/b.txt")
    os.rmdir("/data/sub")
    assert os.listdir("/data") == [] and os.listdir("/x/y") == ["z"]


def test_relative_paths_and_cwd(shim):
    mem = MemoryFS({"/work/in.txt": "hi"})
    shim(mem, cwd="/work")
    assert os.getcwd() == "/work"
    assert open("in.txt").read() == "hi"
    assert os.listdir() == ["in.txt"]
    os.chdir("/")
    assert open("work/in.txt").read() == "hi"
    assert pathlib.Path("work/in.txt").resolve() == pathlib.Path("/work/in.txt")
    assert pathlib.Path.cwd() == pathlib.Path("/")
    with pytest.raises(NotADirectoryError):
        os.chdir("/work/in.txt")


def test_pathlib(shim):
    mem = MemoryFS()
    shim(mem)
    root = pathlib.Path("/proj")
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "m.py").write_text("x = 1\n")
    (root / "data.json").write_text(json.dumps({"k": [1, 2]}))
    (root / "blob.bin").write_bytes(b"\x00\x01")
    (root / "empty").touch()
    assert (root / "empty").exists() and (root / "empty").stat().st_size == 0
    with pytest.raises(FileExistsError):
        (root / "empty").touch(exist_ok=False)
    assert json.loads((root / "data.json").read_text()) == {"k": [1, 2]}
    assert (root / "blob.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in root.iterdir()) == ["blob.bin", "data.json", "empty", "pkg"]
    assert sorted(p.name for p in root.glob("*.json")) == ["data.json"]
    assert [str(p) for p in root.rglob("*.py")] == ["/proj/pkg/m.py"]
    assert root.is_dir() and (root / "data.json").is_file() and not (root / "nope").exists()
    (root / "data.json").rename(root / "d2.json")
    (root / "d2.json").unlink()
    (root / "pkg" / "m.py").unlink()
    (root / "pkg").rmdir()
    assert sorted(mem.listdir("/proj")) == ["blob.bin", "empty"]
    with (root / "blob.bin").open("rb") as f:
        assert f.read() == b"\x00\x01"


def test_virtualfs_through_shim(shim, tmp_path):
    (tmp_path / "ro").mkdir()
    (tmp_path / "rw").mkdir()
    (tmp_path / "secret").write_text("SECRET")
    with open(tmp_path / "ro" / "t.csv", "w", newline="") as f:
        csv.writer(f).writerows([["a", "b"], ["1", "2"]])
    os.symlink(str(tmp_path / "secret"), tmp_path / "ro" / "link")
    vfs = VirtualFS({"/data": str(tmp_path / "ro"), "/out": Mount(str(tmp_path / "rw"), writable=True)})
    try:
        shim(vfs)
        with open("/data/t.csv", newline="") as f:
            assert list(csv.reader(f)) == [["a", "b"], ["1", "2"]]
        with pytest.raises(OSError):
            open("/data/link").read()
        with pytest.raises(PermissionError):
            open("/data/new.txt", "w")
        with pytest.raises(OSError):
            open("/data/../secret").read()
        pathlib.Path("/out/r.txt").write_text("result")
        assert os.listdir("/") == ["data", "out"]
        _fsshim.uninstall()
        assert (tmp_path / "rw" / "r.txt").read_text() == "result"
    finally:
        vfs.close()


def test_fds_and_passthrough_stay_real(shim, tmp_path):
    real = tmp_path / "real.txt"
    real.write_text("real")
    shim(MemoryFS({"/v": "virtual"}), passthrough=[str(tmp_path)])
    assert open(str(real)).read() == "real"
    assert open("/v").read() == "virtual"
    r, w = os.pipe()
    with open(w, "wb") as fw:
        fw.write(b"pipe")
    with open(r, "rb") as fr:
        assert fr.read() == b"pipe"


def test_install_twice_refused(shim):
    shim(MemoryFS())
    with pytest.raises(RuntimeError):
        _fsshim.install(MemoryFS())


def test_in_a_fresh_interpreter(tmp_path):
    script = textwrap.dedent(
        """
        import os, pathlib, json
        from host_apis import MemoryFS
        from sandbox_vm import _fsshim
        fs = MemoryFS({"/cfg/settings.json": json.dumps({"n": 3})})
        _fsshim.install(fs)
        n = json.load(open("/cfg/settings.json"))["n"]
        pathlib.Path("/out").mkdir()
        for i in range(n):
            pathlib.Path(f"/out/{i}.txt").write_text(str(i * i))
        total = sum(int(p.read_text()) for p in sorted(pathlib.Path("/out").iterdir()))
        _fsshim.uninstall()
        print(total, fs.listdir("/out"))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "5 ['0.txt', '1.txt', '2.txt']"


def test_through_a_real_sandbox(tmp_path):
    """Granted as ``fs``, a VirtualFS backs ordinary file code inside a sandbox."""
    from capbridge import ConfinementUnavailable, Sandbox

    (tmp_path / "ro").mkdir()
    (tmp_path / "rw").mkdir()
    (tmp_path / "ro" / "t.csv").write_text("a,b\n1,2\n")
    (tmp_path / "secret").write_text("SECRET")
    os.symlink(str(tmp_path / "secret"), tmp_path / "ro" / "link")
    vfs = VirtualFS({"/data": str(tmp_path / "ro"), "/out": Mount(str(tmp_path / "rw"), writable=True)})
    code = textwrap.dedent(
        """
        import csv, os, pathlib
        from sandbox_vm import _fsshim
        if not _fsshim.installed():
            _fsshim.install(fs)
        rows = list(csv.reader(open("/data/t.csv", newline="")))
        pathlib.Path("/out/r.txt").write_text(repr(rows))
        size = os.stat("/out/r.txt").st_size
        errors = []
        for attempt in ("/data/link", "/data/../secret", "/data/new"):
            try:
                open(attempt, "w" if attempt.endswith("new") else "r").read()
            except OSError as e:
                errors.append((type(e).__name__, e.errno))
        """
    )
    try:
        with Sandbox(grants={"fs": vfs}, confinement="best-effort") as sb:
            sb.exec(code)
            assert sb.eval("rows") == [["a", "b"], ["1", "2"]]
            assert sb.eval("size") == len(repr([["a", "b"], ["1", "2"]]))
            errors = sb.eval("errors")
    except ConfinementUnavailable as e:  # pragma: no cover - machine without confinement
        pytest.skip(str(e))
    finally:
        vfs.close()
    assert (tmp_path / "rw" / "r.txt").read_text() == "[['a', 'b'], ['1', '2']]"
    assert [name for name, _ in errors] == ["OSError", "FileNotFoundError", "PermissionError"]
    assert errors[0][1] == errno.ELOOP and errors[2][1] == errno.EROFS
