"""MemoryFS: the VirtualFS interface in memory, with live quotas."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from host_apis import MemoryFS


def test_seed_and_read():
    fs = MemoryFS({"/d/a.txt": "one\ntwo\n", "/b.bin": b"\x00\xff"})
    assert fs.listdir("/") == ["b.bin", "d"]
    with fs.open("/d/a.txt") as f:
        assert f.name == "/d/a.txt" and f.mode == "rb"
        assert list(f) == [b"one\n", b"two\n"]
        f.seek(0)
        assert f.readline() == b"one\n" and f.read() == b"two\n"
    assert f.closed
    st = os.stat_result(fs.stat("/d/a.txt"))
    assert stat.S_ISREG(st.st_mode) and st.st_size == 8
    assert stat.S_ISDIR(fs.stat("/d")[0]) and stat.S_ISDIR(fs.stat("/")[0])
    assert fs.scandir("/d")[0][:3] == ("a.txt", False, True)
    assert fs.exists("/d") and fs.isdir("/d") and fs.isfile("/b.bin") and not fs.exists("/zz")
    assert fs.getsize("/b.bin") == 2


def test_modes():
    fs = MemoryFS()
    with fs.open("/f", "wb") as f:
        f.write(b"hello")
    with fs.open("/f", "ab") as f:
        f.seek(0)
        f.write(b"!")  # append always writes at the end
    assert fs.read_bytes("/f") == b"hello!"
    with fs.open("/f", "r+b") as f:
        f.write(b"J")
        f.seek(0, 2)
        assert f.tell() == 6
        f.truncate(3)
    assert fs.read_bytes("/f") == b"Jel"
    with pytest.raises(FileExistsError):
        fs.open("/f", "xb")
    fs.open("/g", "xb").close()
    with fs.open("/f", "wb"):
        pass
    assert fs.read_bytes("/f") == b""
    with pytest.raises(OSError):
        fs.open("/f", "rb").write(b"x")
    with pytest.raises(ValueError):
        fs.open("/f", "rt")


def test_errors():
    fs = MemoryFS({"/d/f": "x"})
    with pytest.raises(FileNotFoundError):
        fs.open("/nope")
    with pytest.raises(FileNotFoundError):
        fs.open("/nope/x", "wb")
    with pytest.raises(IsADirectoryError):
        fs.open("/d")
    with pytest.raises(NotADirectoryError):
        fs.listdir("/d/f")
    with pytest.raises(NotADirectoryError):
        fs.open("/d/f/x", "wb")
    with pytest.raises(FileExistsError):
        fs.mkdir("/d")
    with pytest.raises(IsADirectoryError):
        fs.remove("/d")
    with pytest.raises(OSError) as info:
        fs.rmdir("/d")
    assert info.value.errno == errno.ENOTEMPTY
    with pytest.raises(PermissionError):
        fs.stat("/../etc/passwd")
    with pytest.raises(ValueError):
        fs.stat("relative")
    with pytest.raises(OSError):
        fs.rename("/d", "/d/inside")


def test_rename_rules():
    fs = MemoryFS({"/a": "A", "/b": "B", "/d/x": "X"})
    fs.rename("/a", "/b")
    assert fs.read_bytes("/b") == b"A" and not fs.exists("/a")
    fs.mkdir("/e")
    fs.rename("/d", "/e2")
    assert fs.listdir("/e2") == ["x"]
    with pytest.raises(IsADirectoryError):
        fs.rename("/b", "/e")
    with pytest.raises(NotADirectoryError):
        fs.rename("/e", "/b")
    fs.rename("/e", "/e2/sub")
    assert fs.listdir("/e2") == ["sub", "x"]


def test_read_only():
    fs = MemoryFS({"/a": "A"}, read_only=True)
    for call in (
        lambda: fs.open("/a", "wb"),
        lambda: fs.open("/n", "wb"),
        lambda: fs.mkdir("/d"),
        lambda: fs.remove("/a"),
        lambda: fs.rename("/a", "/b"),
    ):
        with pytest.raises(PermissionError) as info:
            call()
        assert info.value.errno == errno.EROFS
    assert fs.stat("/a")[0] & 0o222 == 0
    assert fs.open("/a").read() == b"A"


def test_quota_bytes_live():
    fs = MemoryFS(max_bytes=10)
    with fs.open("/a", "wb") as f:
        f.write(b"12345678")
        with pytest.raises(OSError) as info:
            f.write(b"123")
        assert info.value.errno == errno.EDQUOT
        f.seek(0)
        f.write(b"abc")  # overwriting does not grow
    assert fs.read_bytes("/a") == b"abc45678"
    with fs.open("/a", "r+b") as f:
        f.seek(1_000_000)
        with pytest.raises(OSError):
            f.write(b"x")  # a hole costs memory too
        with pytest.raises(OSError):
            f.truncate(1000)
    fs.remove("/a")  # frees room
    assert fs.usage()["bytes_used"] == 0
    with fs.open("/b", "wb") as f:
        f.write(b"0123456789")
    with fs.open("/b", "wb"):
        pass  # truncation frees room
    assert fs.usage()["bytes_used"] == 0


def test_quota_files():
    fs = MemoryFS(max_files=3)
    fs.mkdir("/d")
    fs.open("/d/a", "wb").close()
    fs.open("/d/b", "wb").close()
    with pytest.raises(OSError) as info:
        fs.open("/d/c", "wb")
    assert info.value.errno == errno.EDQUOT
    with pytest.raises(OSError):
        fs.mkdir("/e")
    assert fs.listdir("/d") == ["a", "b"]
    fs.remove("/d/a")
    fs.open("/d/c", "wb").close()
    assert fs.usage()["files_used"] == 3


def test_default_quota_is_finite():
    fs = MemoryFS()
    assert fs.max_bytes is not None and fs.max_files is not None
    with pytest.raises(ValueError):
        MemoryFS(max_bytes=-1)


def test_open_handle_survives_remove():
    fs = MemoryFS({"/a": "data"})
    f = fs.open("/a")
    fs.remove("/a")
    assert f.read() == b"data"


def test_quota_overwriting_refunds_nothing():
    """Overwriting inside a file must not lower what the tree is charged."""
    fs = MemoryFS(max_bytes=10)
    with fs.open("/a", "wb") as f:
        f.write(b"0123456789")
        f.seek(0)
        f.write(b"x")
        assert fs.usage()["bytes_used"] == 10
        f.seek(10)
        with pytest.raises(OSError) as info:
            f.write(b"more")  # the tree is full
        assert info.value.errno == errno.EDQUOT
    assert fs.read_bytes("/a") == b"x123456789"


def test_quota_charges_the_hole_a_write_past_the_end_leaves():
    fs = MemoryFS(max_bytes=65536)
    with fs.open("/a", "wb") as f:
        f.seek(200 * 1024 * 1024)
        with pytest.raises(OSError) as info:
            f.write(b"x")
        assert info.value.errno == errno.EDQUOT
        with pytest.raises(OSError):
            f.truncate(70_000)
        f.seek(1000)
        f.write(b"x")  # control: a hole within the quota
    assert len(fs.read_bytes("/a")) == 1001 and fs.usage()["bytes_used"] == 1001
