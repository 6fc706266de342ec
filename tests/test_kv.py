"""KeyValueStore: values, namespaces, quotas, atomic batches, persistence across processes."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap

import pytest

from host_apis import KeyValueStore


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / "kv.sqlite")


@pytest.fixture
def kv(db):
    store = KeyValueStore(db, "tenant-a")
    yield store
    store.close()


def test_values_round_trip(kv):
    values = {
        "none": None,
        "t": True,
        "i": -(2**70),
        "f": 1.5,
        "nan": float("inf"),
        "s": "héllo\x01",
        "b": b"\x00\xff",
        "ba": bytearray(b"ab"),
        "list": [1, "two", None, [3.0]],
        "dict": {"a": {"b": [True]}},
        "tuple": (1, 2),
    }
    for k, v in values.items():
        kv.set(k, v)
    assert kv.get("ba") == b"ab" and type(kv.get("ba")) is bytes
    assert kv.get("tuple") == [1, 2]
    for k in ("none", "t", "i", "f", "nan", "s", "b", "list", "dict"):
        assert kv.get(k) == values[k] and type(kv.get(k)) is type(values[k])
    assert kv.get("missing") is None and kv.get("missing", 7) == 7


def test_refuses_other_values_and_keys(kv):
    for bad in (object(), {1: "x"}, [b"nested bytes"], {1, 2}, 1j):
        with pytest.raises(TypeError):
            kv.set("k", bad)
    for key in ("", "a\x00b", "x" * 2000):
        with pytest.raises(ValueError):
            kv.set(key, 1)
    with pytest.raises(TypeError):
        kv.set(b"bytes-key", 1)  # type: ignore[arg-type]
    assert len(kv) == 0


def test_mapping_protocol_and_keys(kv):
    kv["user:1"] = "a"
    kv["user:2"] = "b"
    kv["user:10"] = "c"
    kv["other"] = "d"
    kv["user%_"] = "e"  # LIKE wildcards are not special
    assert "user:1" in kv and "nope" not in kv
    assert len(kv) == 5
    assert kv["user:2"] == "b"
    assert kv.keys("user:") == ["user:1", "user:10", "user:2"]
    assert kv.keys("user%") == ["user%_"]
    assert kv.keys() == sorted(["user:1", "user:2", "user:10", "other", "user%_"])
    assert kv.keys("user:", limit=1) == ["user:1"]
    assert kv.items("user:1") == [("user:1", "a"), ("user:10", "c")]
    del kv["other"]
    with pytest.raises(KeyError):
        del kv["other"]
    with pytest.raises(KeyError):
        kv["other"]
    assert kv.delete("user:1") is True and kv.delete("user:1") is False
    assert len(kv) == 3


def test_namespaces_are_isolated(db):
    a = KeyValueStore(db, "a")
    b = KeyValueStore(db, "b")
    try:
        a.set("k", "from a")
        b.set("k", "from b")
        b.set("only-b", 1)
        assert a.get("k") == "from a" and b.get("k") == "from b"
        assert a.keys() == ["k"] and "only-b" not in a and len(a) == 1
        a.delete("k")
        assert b.get("k") == "from b"
    finally:
        a.close()
        b.close()


def test_quota_keys(db):
    kv = KeyValueStore(db, "q", max_keys=2)
    try:
        kv.set("a", 1)
        kv.set("b", 2)
        kv.set("a", 3)  # replacing is not a new key
        with pytest.raises(OSError) as info:
            kv.set("c", 4)
        assert info.value.errno == errno.EDQUOT
        assert kv.keys() == ["a", "b"]
        kv.delete("a")
        kv.set("c", 4)
    finally:
        kv.close()


def test_quota_bytes(db):
    kv = KeyValueStore(db, "q", max_bytes=20)
    try:
        kv.set("k", b"x" * 15)  # 1 + 15
        with pytest.raises(OSError):
            kv.set("k2", b"x" * 5)
        kv.set("k", b"x" * 19)  # replacing counts the difference
        assert kv.usage()["bytes"] == 20
        with pytest.raises(OSError):
            kv.set("k", b"x" * 20)
        assert kv.get("k") == b"x" * 19
    finally:
        kv.close()


def test_apply_is_atomic(db):
    kv = KeyValueStore(db, "t", max_keys=3)
    try:
        kv.set("keep", "old")
        with pytest.raises(OSError):
            kv.apply([("set", "keep", "new"), ("set", "a", 1), ("set", "b", 2), ("set", "c", 3)])
        assert kv.get("keep") == "old" and kv.keys() == ["keep"] and len(kv) == 1
        with pytest.raises(ValueError):
            kv.apply([("set", "x", 1), ("bogus", "y")])
        assert kv.keys() == ["keep"]
        kv.apply([("set", "x", 1), ("delete", "keep"), ("set", "y", 2)])
        assert kv.keys() == ["x", "y"]
        kv.set_many({"p": 1})
        assert kv.keys() == ["p", "x", "y"]
        with pytest.raises(TypeError):
            kv.set_many({"r": 1, "s": object()})
        assert "r" not in kv
    finally:
        kv.close()


def test_batch_context_manager(kv):
    with kv.batch() as b:
        b.set("a", 1)
        b.set("b", 2)
        assert len(b) == 2
        assert "a" not in kv  # nothing visible before commit
    assert kv.keys() == ["a", "b"]
    with pytest.raises(RuntimeError):
        with kv.batch() as b:
            b.delete("a")
            b.set("c", 3)
            raise RuntimeError("abort")
    assert kv.keys() == ["a", "b"]  # rolled back
    b = kv.batch()
    b.set("z", 1)
    b.commit()
    with pytest.raises(ValueError):
        b.set("z", 2)
    assert kv.get("z") == 1


def test_batch_rolls_back_on_quota(db):
    kv = KeyValueStore(db, "t", max_keys=2)
    try:
        kv.set("a", 0)
        with pytest.raises(OSError):
            with kv.batch() as b:
                b.set("a", 1)
                b.set("b", 2)
                b.set("c", 3)
        assert kv.get("a") == 0 and kv.keys() == ["a"]
    finally:
        kv.close()


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_survives_host_restart(db):
    _run(
        f"""
        from host_apis import KeyValueStore
        kv = KeyValueStore({db!r}, "tenant")
        kv.set("counter", 41)
        kv.set_many({{"blob": b"\\x00\\x01", "cfg": {{"a": [1, 2]}}}})
        kv.close()
        """
    )
    out = _run(
        f"""
        from host_apis import KeyValueStore
        kv = KeyValueStore({db!r}, "tenant")
        kv.set("counter", kv.get("counter") + 1)
        other = KeyValueStore({db!r}, "someone-else")
        print(kv.get("counter"), kv.get("blob"), kv.get("cfg"), len(kv), other.keys())
        """
    )
    assert out == "42 b'\\x00\\x01' {'a': [1, 2]} 3 []"
    kv = KeyValueStore(db, "tenant")
    try:
        assert kv.get("counter") == 42 and kv.usage()["keys"] == 3
    finally:
        kv.close()


def test_no_pickle_in_storage(kv, db):
    kv.set("x", {"a": 1})
    kv.set("y", "text")
    kv.close()
    raw = open(db, "rb").read()
    assert b'{"a":1}' in raw and b"\x80\x04" not in raw and b"\x80\x05" not in raw
    assert os.path.getsize(db) > 0


def test_closed_store(db):
    kv = KeyValueStore(db, "c")
    kv.close()
    kv.close()
    with pytest.raises(ValueError):
        kv.get("a")
    with pytest.raises(ValueError):
        KeyValueStore(db, "")
