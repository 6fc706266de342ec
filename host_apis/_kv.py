"""``KeyValueStore``: a namespaced, quota-bound key-value store in one SQLite file.

Values are stored in a small tagged encoding, never pickled: ``bytes`` (``bytearray``
comes back as ``bytes``) and ``str`` as themselves, and ``None``, ``bool``, ``int``,
``float`` and lists / string-keyed dicts of those (tuples come back as lists) as JSON.
Anything else is refused with ``TypeError``. Every read and write is confined to the
store's namespace, so tenants sharing one file never see each other's keys.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
import threading
from typing import Any, Iterator, Sequence

from capbridge import expose

__all__ = ["KeyValueStore", "KVBatch", "MAX_KEY_BYTES"]

#: Longest key accepted, in UTF-8 bytes.
MAX_KEY_BYTES = 1024
_MAX_DEPTH = 64
_MAX_BATCH_OPS = 100_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS capbridge_kv (
    ns TEXT NOT NULL, key TEXT NOT NULL, kind TEXT NOT NULL, value BLOB NOT NULL,
    PRIMARY KEY (ns, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS capbridge_kv_usage (
    ns TEXT PRIMARY KEY, keys INTEGER NOT NULL, bytes INTEGER NOT NULL
);
"""

_MISSING = object()


def _check_json(value: Any, depth: int = 0) -> None:
    if depth > _MAX_DEPTH:
        raise ValueError("value nests too deeply")
    if value is None or isinstance(value, (bool, int, float, str)):
        return
    if isinstance(value, (list, tuple)):
        for item in value:
            _check_json(item, depth + 1)
        return
    if isinstance(value, dict):
        for k, item in value.items():
            if not isinstance(k, str):
                raise TypeError(f"dict keys in stored values must be str, not {type(k).__name__}")
            _check_json(item, depth + 1)
        return
    raise TypeError(f"cannot store a value of type {type(value).__name__}")


def encode_value(value: Any) -> tuple[str, bytes]:
    """``(kind, blob)`` for a storable value."""
    if isinstance(value, (bytes, bytearray)):
        return "b", bytes(value)
    if isinstance(value, str):
        return "s", value.encode("utf-8", "surrogatepass")
    _check_json(value)
    return "j", json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def decode_value(kind: str, blob: bytes) -> Any:
    if kind == "b":
        return bytes(blob)
    if kind == "s":
        return bytes(blob).decode("utf-8", "surrogatepass")
    if kind == "j":
        return json.loads(bytes(blob).decode("utf-8"))
    raise ValueError(f"unknown stored kind {kind!r}")


def _check_key(key: Any) -> str:
    if not isinstance(key, str):
        raise TypeError(f"keys are str, not {type(key).__name__}")
    if not key or "\x00" in key:
        raise ValueError("keys are non-empty and contain no NUL")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise ValueError(f"keys are at most {MAX_KEY_BYTES} UTF-8 bytes")
    return key


def _quota_error(what: str) -> OSError:
    return OSError(errno.EDQUOT, f"key-value quota exceeded: {what}")


class KeyValueStore:
    """A key-value store for one tenant (``namespace``) in the SQLite file ``path``.

    ``max_keys`` and ``max_bytes`` (UTF-8 key bytes plus encoded value bytes) bound
    the namespace; ``None`` lifts a limit. A write that would exceed them raises
    ``OSError(EDQUOT)`` and changes nothing. Data survives the host process; several
    processes may share the file. :meth:`apply`, :meth:`set_many` and :meth:`batch`
    are atomic. Call :meth:`close` on the host when done.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        namespace: str,
        *,
        max_keys: int | None = 100_000,
        max_bytes: int | None = 64 * 1024 * 1024,
    ) -> None:
        if not isinstance(namespace, str) or not namespace or len(namespace) > 256:
            raise ValueError("namespace must be a non-empty str of at most 256 characters")
        for name, value in (("max_keys", max_keys), ("max_bytes", max_bytes)):
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be a non-negative int or None")
        self.namespace = namespace
        self.max_keys = max_keys
        self.max_bytes = max_bytes
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = sqlite3.connect(
            os.fspath(path), timeout=30.0, isolation_level=None, check_same_thread=False
        )
        with self._txn() as db:
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    db.execute(stmt)

    # ------------------------------------------------------------------ host only

    def close(self) -> None:
        """Close the database connection (host only)."""
        with self._lock:
            if self._db is not None:
                db, self._db = self._db, None
                db.close()

    def __repr__(self) -> str:
        return f"<KeyValueStore namespace={self.namespace!r}>"

    # ------------------------------------------------------------------ internals

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise ValueError("KeyValueStore is closed")
        return self._db

    @contextlib.contextmanager
    def _txn(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            db = self._conn()
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _usage(self, db: sqlite3.Connection) -> tuple[int, int]:
        row = db.execute(
            "SELECT keys, bytes FROM capbridge_kv_usage WHERE ns = ?", (self.namespace,)
        ).fetchone()
        return (row[0], row[1]) if row else (0, 0)

    def _put_usage(self, db: sqlite3.Connection, keys: int, size: int) -> None:
        db.execute(
            "INSERT INTO capbridge_kv_usage (ns, keys, bytes) VALUES (?, ?, ?) "
            "ON CONFLICT(ns) DO UPDATE SET keys = excluded.keys, bytes = excluded.bytes",
            (self.namespace, keys, size),
        )

    def _old_size(self, db: sqlite3.Connection, key: str) -> int | None:
        row = db.execute(
            "SELECT length(CAST(value AS BLOB)) FROM capbridge_kv WHERE ns = ? AND key = ?",
            (self.namespace, key),
        ).fetchone()
        return None if row is None else len(key.encode("utf-8", "surrogatepass")) + row[0]

    def _apply(self, db: sqlite3.Connection, ops: Sequence[tuple[str, str, tuple[str, bytes] | None]]) -> None:
        keys, size = self._usage(db)
        for op, key, enc in ops:
            old = self._old_size(db, key)
            if op == "set":
                assert enc is not None
                kind, blob = enc
                new = len(key.encode("utf-8", "surrogatepass")) + len(blob)
                keys += old is None
                size += new - (old or 0)
                if self.max_keys is not None and keys > self.max_keys:
                    raise _quota_error(f"more than {self.max_keys} keys")
                if self.max_bytes is not None and size > self.max_bytes:
                    raise _quota_error(f"more than {self.max_bytes} bytes")
                db.execute(
                    "INSERT INTO capbridge_kv (ns, key, kind, value) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(ns, key) DO UPDATE SET kind = excluded.kind, value = excluded.value",
                    (self.namespace, key, kind, blob),
                )
            elif old is not None:
                keys -= 1
                size -= old
                db.execute(
                    "DELETE FROM capbridge_kv WHERE ns = ? AND key = ?", (self.namespace, key)
                )
        self._put_usage(db, keys, size)

    @staticmethod
    def _prepare(ops: Any) -> list[tuple[str, str, tuple[str, bytes] | None]]:
        if not isinstance(ops, (list, tuple)):
            raise TypeError("ops is a list of ('set', key, value) / ('delete', key) tuples")
        if len(ops) > _MAX_BATCH_OPS:
            raise ValueError(f"at most {_MAX_BATCH_OPS} operations per batch")
        out: list[tuple[str, str, tuple[str, bytes] | None]] = []
        for op in ops:
            if not isinstance(op, (list, tuple)) or not op:
                raise TypeError(f"bad operation {op!r}")
            if op[0] == "set" and len(op) == 3:
                out.append(("set", _check_key(op[1]), encode_value(op[2])))
            elif op[0] == "delete" and len(op) == 2:
                out.append(("delete", _check_key(op[1]), None))
            else:
                raise ValueError(f"bad operation {op!r}: use ('set', key, value) or ('delete', key)")
        return out

    # ------------------------------------------------------------------ reads

    @expose
    def get(self, key: str, default: Any = None) -> Any:
        """The value stored under ``key``, or ``default``."""
        _check_key(key)
        with self._lock:
            row = self._conn().execute(
                "SELECT kind, value FROM capbridge_kv WHERE ns = ? AND key = ?",
                (self.namespace, key),
            ).fetchone()
        return default if row is None else decode_value(row[0], row[1])

    @expose
    def keys(self, prefix: str = "", limit: int | None = None) -> list[str]:
        """Sorted keys starting with ``prefix`` (at most ``limit`` of them)."""
        if not isinstance(prefix, str):
            raise TypeError("prefix must be str")
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise ValueError("limit must be a non-negative int or None")
        with self._lock:
            rows = self._conn().execute(
                "SELECT key FROM capbridge_kv WHERE ns = ? AND key >= ? "
                "AND substr(key, 1, ?) = ? ORDER BY key LIMIT ?",
                (self.namespace, prefix, len(prefix), prefix, -1 if limit is None else limit),
            ).fetchall()
        return [r[0] for r in rows]

    @expose
    def items(self, prefix: str = "", limit: int | None = None) -> list[tuple[str, Any]]:
        """Sorted ``(key, value)`` pairs whose key starts with ``prefix``."""
        keys = self.keys(prefix, limit)
        out = []
        for key in keys:
            value = self.get(key, _MISSING)
            if value is not _MISSING:
                out.append((key, value))
        return out

    @expose
    def usage(self) -> dict[str, int | None]:
        """Keys and bytes used by this namespace, and the limits."""
        with self._lock:
            keys, size = self._usage(self._conn())
        return {"keys": keys, "max_keys": self.max_keys, "bytes": size, "max_bytes": self.max_bytes}

    @expose
    def __contains__(self, key: str) -> bool:
        _check_key(key)
        with self._lock:
            row = self._conn().execute(
                "SELECT 1 FROM capbridge_kv WHERE ns = ? AND key = ?", (self.namespace, key)
            ).fetchone()
        return row is not None

    @expose
    def __len__(self) -> int:
        with self._lock:
            return self._usage(self._conn())[0]

    @expose
    def __getitem__(self, key: str) -> Any:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    # ------------------------------------------------------------------ writes

    @expose
    def set(self, key: str, value: Any) -> None:
        """Store ``value`` under ``key``."""
        self.apply([("set", key, value)])

    @expose
    def __setitem__(self, key: str, value: Any) -> None:
        self.set(key, value)

    @expose
    def delete(self, key: str) -> bool:
        """Remove ``key``; returns whether it was there."""
        _check_key(key)
        with self._txn() as db:
            existed = self._old_size(db, key) is not None
            self._apply(db, [("delete", key, None)])
        return existed

    @expose
    def __delitem__(self, key: str) -> None:
        if not self.delete(key):
            raise KeyError(key)

    @expose
    def set_many(self, mapping: dict[str, Any]) -> None:
        """Store every pair of ``mapping`` atomically."""
        if not isinstance(mapping, dict):
            raise TypeError("set_many takes a dict")
        self.apply([("set", k, v) for k, v in mapping.items()])

    @expose
    def apply(self, ops: list[tuple]) -> None:
        """Apply ``[('set', key, value) | ('delete', key), ...]`` atomically: all or none."""
        prepared = self._prepare(ops)
        with self._txn() as db:
            self._apply(db, prepared)

    @expose
    def batch(self) -> "KVBatch":
        """A batch to fill and commit atomically: ``with kv.batch() as b: b.set(...)``."""
        return KVBatch(self)


class KVBatch:
    """Operations collected for one atomic commit to a :class:`KeyValueStore`.

    Used as a context manager it commits on a clean exit and discards on an exception.
    """

    def __init__(self, store: KeyValueStore) -> None:
        self._store = store
        self._ops: list[tuple[str, str, tuple[str, bytes] | None]] = []
        self._bytes = 0
        self._done = False
        self._limit = store.max_bytes if store.max_bytes is not None else 256 * 1024 * 1024

    def _add(self, op: tuple[str, str, tuple[str, bytes] | None]) -> None:
        if self._done:
            raise ValueError("this batch was already committed or discarded")
        if len(self._ops) >= _MAX_BATCH_OPS:
            raise ValueError(f"at most {_MAX_BATCH_OPS} operations per batch")
        size = len(op[1]) + (len(op[2][1]) if op[2] else 0)
        if self._bytes + size > self._limit:
            raise _quota_error("batch larger than the store's byte limit")
        self._bytes += size
        self._ops.append(op)

    @expose
    def set(self, key: str, value: Any) -> None:
        """Queue storing ``value`` under ``key``."""
        self._add(("set", _check_key(key), encode_value(value)))

    @expose
    def delete(self, key: str) -> None:
        """Queue removing ``key``."""
        self._add(("delete", _check_key(key), None))

    @expose
    def commit(self) -> None:
        """Apply every queued operation atomically."""
        if self._done:
            raise ValueError("this batch was already committed or discarded")
        self._done = True
        ops, self._ops = self._ops, []
        with self._store._txn() as db:
            self._store._apply(db, ops)

    @expose
    def discard(self) -> None:
        """Drop every queued operation."""
        self._done = True
        self._ops = []

    @expose
    def __len__(self) -> int:
        return len(self._ops)

    @expose
    def __enter__(self) -> "KVBatch":
        return self

    @expose
    def __exit__(self, exc_type: Any = None, exc: Any = None, tb: Any = None) -> None:
        if self._done:
            return
        if exc_type is None:
            self.commit()
        else:
            self.discard()
