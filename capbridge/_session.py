"""One end of a connection, without I/O: boxing, unboxing and dispatch.

A :class:`Session` turns outgoing calls, returns and errors into bodies, turns
incoming bodies into checked messages with references resolved against its own
tables, and runs incoming calls against its exports. The thin I/O layer
(:mod:`capbridge._channel`) moves the bodies.

The host's session distrusts its peer (``trusted_peer=False``): bodies are scanned
and decoded with the restricted unpickler, references are inert until resolved
here, and a call may only reach members the target's interface exposes. The
sandbox's session trusts its peer, the host.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import io
import os
import itertools
import pickle
import threading
import time
import types
import traceback
from typing import Any, Callable

from . import _codec
from ._errors import (
    CapabilityError,
    ProtocolError,
    RemoteError,
    RevokedError,
    safe_repr,
)
from ._expose import (
    Interface,
    Member,
    Revoker,
    interface_of,
    unwrap,
    value_type,
    value_type_named,
    value_type_of,
)
from ._protocol import Op, Tag, check_message
from ._proxy import ITER_BATCH, InterfaceDesc, Proxy, build_proxy_class, check_descriptor, new_proxy
from ._tables import Export, Tables

__all__ = ["Session", "ShippedCall", "AuditEvent"]

_DATETIMES = frozenset({_dt.date, _dt.time, _dt.datetime, _dt.timedelta, _dt.timezone})
_loads = pickle.loads
_dumps = pickle.dumps
_loads_untrusted = _codec.loads_untrusted
_check_message = check_message
_MAX_DEPTH = _codec.MAX_DEPTH

_CALL_T, _RETURN_T, _RAISE_T, _RELEASE_T = int(Tag.CALL), int(Tag.RETURN), int(Tag.RAISE), int(Tag.RELEASE)
_OP_CALL, _OP_GET, _OP_SET, _OP_ITER = int(Op.CALL), int(Op.GET), int(Op.SET), int(Op.ITER)
_SCALARS = frozenset({type(None), bool, int, float, str, bytes})
_PLAIN = _codec.PLAIN_TYPES
_STDLIB_VALUES = _codec.STDLIB_VALUE_TYPES
_SHIP_OK_MODULES = {"typing", "types", "abc", "enum", "functools", "collections.abc", "_collections_abc",
                    "dataclasses"}


class ShippedCall:
    """``Sandbox.call``'s function and arguments, shipped by value with cloudpickle."""

    __slots__ = ("fn", "args", "kwargs")

    def __init__(self, fn: Any, args: tuple, kwargs: dict) -> None:
        self.fn, self.args, self.kwargs = fn, args, kwargs


@dataclasses.dataclass(frozen=True)
class AuditEvent:
    """One call from the sandbox through a capability, as the audit hook sees it."""

    capability: str
    member: str
    op: str
    arg_bytes: int
    duration: float
    outcome: str  # "ok" or the exception's type name


class _Iterator:
    """An iterator being walked in batches by the peer."""

    __slots__ = ("it", "__weakref__")

    def __init__(self, it: Any) -> None:
        self.it = it

    def next_batch(self, n: int) -> tuple[list, bool]:
        n = max(1, min(int(n), ITER_BATCH * 16))
        batch = list(itertools.islice(self.it, n))
        return batch, len(batch) == n


_ITER_IFACE = Interface(
    name="iterator", doc="", methods={"next_batch": Member("", "(n)")}, properties={}, dunders={}
)


class _Encoding:
    """Bookkeeping for one outgoing body: rolled back if encoding fails."""

    __slots__ = ("exports", "ifaces", "revokers")

    def __init__(self, revokers: frozenset[Revoker]) -> None:
        self.exports: list[Export] = []
        self.ifaces: list[int] = []
        self.revokers = revokers


class _FastPickler:
    """Reusable memo-free picklers (what the host's scanner accepts).

    Two of them: once a C pickler has had ``persistent_id`` set, it calls a Python
    hook for every object, so the scalar path keeps one that never had one.
    """

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.plain = pickle.Pickler(self.buf, 5)
        self.plain.fast = True
        self.hooked = pickle.Pickler(self.buf, 5)
        self.hooked.fast = True

    def dumps(self, obj: Any, pid: Callable[[Any], Any] | None) -> bytes:
        buf = self.buf
        buf.seek(0)
        buf.truncate()
        if pid is not None:
            p = self.hooked
            p.persistent_id = pid
            try:
                p.dump(obj)
            finally:
                p.persistent_id = _no_pid
        else:
            self.plain.dump(obj)
        return buf.getvalue()


def _no_pid(obj: Any) -> None:
    return None


class Session:
    """Tables, codec and dispatch of one connection end."""

    def __init__(
        self,
        *,
        trusted_peer: bool,
        max_frame: int = 64 * 1024 * 1024,
        debug: bool = False,
        bootstrap: Any = None,
        allow_modules: tuple[str, ...] = (),
        audit: Callable[[AuditEvent], None] | None = None,
        awaiter: Callable[[Any], Any] | None = None,
    ) -> None:
        self.trusted_peer = trusted_peer
        self.max_frame = max_frame
        self.debug = debug
        self.bootstrap = bootstrap
        self.allow_modules = frozenset(allow_modules)
        self.audit = audit
        self.awaiter = awaiter
        self._arg_bytes: dict[int, int] = {}  # qid -> body size, for the audit hook
        self.tables = Tables()
        self._export_of = self.tables.exports.get
        self.channel: Any = None  # the I/O layer proxies call through
        self._iface_keys: dict[int, tuple[int, Any]] = {}
        self._iface_sent: set[int] = set()
        self._next_iface = 1
        self._peer_classes: dict[int, type] = {}
        self._local = threading.local()
        self.calls_in = 0
        self.bytes_in = 0
        self.bytes_out = 0

    # ------------------------------------------------------------------ outgoing

    def _ctx(self) -> _Encoding | None:
        return getattr(self._local, "enc", None)

    def _serving_revokers(self) -> frozenset[Revoker]:
        return getattr(self._local, "revokers", frozenset())

    def encode(self, msg: tuple) -> bytes:
        """Body for ``msg``; raises :class:`CapabilityError` for what may not cross.

        Must be called with the channel's send lock held, so interface descriptors
        reach the peer in the order they were first referenced.
        """
        enc = _Encoding(self._serving_revokers())
        self._local.enc = enc
        try:
            body = self._dumps(msg, self._pid_out)
        except BaseException:
            self._rollback(enc)
            raise
        finally:
            self._local.enc = None
        self._checked_size(body)
        self._iface_sent.update(enc.ifaces)
        return body

    def encode_plain(self, msg: tuple) -> bytes:
        """Body for a message that holds only plain data (no tables involved)."""
        if self.trusted_peer and msg[0] == _CALL_T:
            # pickle.dumps memoizes str and bytes; the same object twice would
            # become a memo GET, which the host refuses. Use it only when no
            # str/bytes object repeats (the method name counts).
            seen = None
            for a in msg[6]:
                if type(a) is str or type(a) is bytes:
                    if seen is None:
                        seen = {id(msg[5])}
                    if id(a) in seen:
                        return self._checked_size(self._dumps(msg, None))
                    seen.add(id(a))
            return self._checked_size(_dumps(msg, 5))
        if self.trusted_peer and msg[0] != _RETURN_T:
            return self._checked_size(self._dumps(msg, None))  # memo-free
        # The host's pickles are trusted; a RETURN of one scalar shares no objects.
        return self._checked_size(_dumps(msg, 5))

    def _checked_size(self, body: bytes) -> bytes:
        if len(body) > self.max_frame:
            raise CapabilityError(
                f"message of {len(body)} bytes exceeds the limit of {self.max_frame} bytes "
                "(Limits.max_message_mb)"
            )
        self.bytes_out += len(body) + 4
        return body

    def _dumps(self, msg: tuple, pid: Callable[[Any], Any] | None) -> bytes:
        if self.trusted_peer:
            # We are the sandbox: the host only accepts memo-free pickles.
            fp = getattr(self._local, "fp", None)
            if fp is None:
                fp = self._local.fp = _FastPickler()
            return fp.dumps(msg, pid)
        if pid is None:
            return _dumps(msg, 5)
        buf = io.BytesIO()
        p = pickle.Pickler(buf, 5)
        p.persistent_id = pid
        p.dump(msg)
        return buf.getvalue()

    def _rollback(self, enc: _Encoding) -> None:
        for entry in enc.exports:
            self.tables.exports.release(entry.id, 1)

    def _pid_out(self, obj: Any) -> Any:
        t = type(obj)
        if t in _PLAIN:
            return None
        if t in _STDLIB_VALUES:
            return self._stdlib_value_pid(t, obj)
        if t is _Iterator:
            return self._export(obj, iterator=True)
        if isinstance(obj, type) and obj in _STDLIB_VALUES and not self.trusted_peer:
            return None  # a class pickle names while reducing a by-value object
        if isinstance(obj, Proxy):
            if obj._cb_chan is not self.channel:
                raise CapabilityError("a proxy from another sandbox cannot be passed to this one")
            return ("r", obj._cb_id)
        if t is ShippedCall:
            return ("f", self._ship(obj))
        vt = value_type_of(t)
        if vt is not None:
            return ("v", "vt", _vt_record(vt, obj))
        return self._export(obj)

    def _stdlib_value_pid(self, t: type, obj: Any) -> Any:
        # The sandbox's pickles may only hold data, so it always sends records. The
        # host pickles these normally, except the datetime types: a tzinfo such as
        # ZoneInfo would reduce through objects that are not values.
        if self.trusted_peer or t in _DATETIMES:
            return _codec.encode_value_record(obj)
        return None

    def _export(self, obj: Any, *, iterator: bool = False) -> tuple:
        enc = self._ctx()
        revokers = enc.revokers if enc is not None else frozenset()
        if iterator:
            iface: Any = _ITER_IFACE
            target = obj
        elif self.trusted_peer:
            iface = _sandbox_interface(obj)
            target = obj
        else:
            iface = interface_of(obj)
            if iface is None:
                raise CapabilityError(_not_shareable(obj))
            target, more = unwrap(obj)
            if more:
                revokers = revokers | frozenset(more)
        entry = self.tables.exports.export(obj, target, iface, revokers, iterator=iterator)
        if enc is not None:
            enc.exports.append(entry)
        key_iface = self._iface_keys.get(id(iface))
        if key_iface is None or key_iface[1] is not iface:
            key = self._next_iface
            self._next_iface += 1
            self._iface_keys[id(iface)] = (key, iface)
        else:
            key = key_iface[0]
        desc = None
        if key not in self._iface_sent and (enc is None or key not in enc.ifaces):
            desc = _describe(iface, self.trusted_peer and not iterator)
            if enc is not None:
                enc.ifaces.append(key)
        return ("c", entry.id, key, desc)

    def _ship(self, shipped: ShippedCall) -> bytes:
        from ._shipping import ship

        return ship(shipped, self)

    def pid_for_shipping(self, obj: Any) -> Any:
        """persistent_id used while shipping a function by value (host side)."""
        t = type(obj)
        if t in _PLAIN:
            return None
        if t in _STDLIB_VALUES:
            return self._stdlib_value_pid(t, obj)
        if isinstance(obj, Proxy):
            return self._pid_out(obj)
        vt = value_type_of(t)
        if vt is not None:
            return ("v", "vt", _vt_record(vt, obj))
        if isinstance(obj, type):
            vt = value_type_of(obj)
            if vt is not None:
                # The sandbox uses its own class of that value type, so instances it
                # makes cross back as fields.
                return ("v", "vtclass", (vt.name, vt.fields, vt.is_tuple))
        if isinstance(obj, (types.FunctionType, type, types.ModuleType, types.CodeType, types.CellType,
                            property, classmethod, staticmethod, types.BuiltinFunctionType,
                            types.MethodDescriptorType, types.WrapperDescriptorType,
                            types.GetSetDescriptorType, types.MemberDescriptorType,
                            types.MappingProxyType, types.GenericAlias, types.NotImplementedType,
                            types.EllipsisType, slice, range)):
            return None
        if isinstance(obj, types.MethodType):
            if isinstance(obj.__self__, (type, types.ModuleType)):
                return None
            return self._export(obj)
        if type(t).__module__ in _SHIP_OK_MODULES or t.__module__ in _SHIP_OK_MODULES:
            return None
        if interface_of(obj) is not None:
            return self._export(obj)
        raise CapabilityError(
            f"cannot ship a {_codec.describe_type(obj)} into the sandbox: only values, "
            "capabilities, functions, classes and modules can travel with Sandbox.call "
            "(expose it, wrap it with facet(), or pass the data it holds as values)"
        )

    def raise_body(self, qid: int, exc: BaseException) -> bytes:
        return self.encode_plain((_RAISE_T, qid, self.error_data(exc)))

    def release_body(self, pairs: tuple) -> bytes:
        return self.encode_plain((_RELEASE_T, pairs))

    def error_data(self, exc: BaseException) -> tuple:
        """An exception as plain data: (type name, args, message, traceback text, extra)."""
        t = type(exc)
        name = t.__name__
        if isinstance(exc, RemoteError):
            name = exc.type_name
        elif t.__module__ not in ("builtins", "capbridge"):
            name = f"{t.__module__}.{t.__qualname__}"
        args = exc.args if _plain_args(exc.args) else (str(exc),)
        try:
            message = str(exc)
        except Exception:
            message = f"<unprintable {t.__name__}>"
        tb = ""
        extra: dict[str, Any] = {}
        if self.trusted_peer:
            _trim_runtime_frames(exc)
            extra["frames"] = _frames_as_data(exc.__traceback__)
        if self.trusted_peer or self.debug:
            tb = _traceback_text(exc)
        if isinstance(exc, OSError):
            for attr in ("filename", "filename2"):
                v = getattr(exc, attr, None)
                if type(v) in (str, bytes, int):
                    extra[attr] = v
        return (name, args, message[:65536], tb[:262144], extra)

    # ------------------------------------------------------------------ incoming

    def decode(self, body: bytes) -> tuple:
        """Message for ``body``, checked and with references resolved."""
        size = len(body)
        self.bytes_in += size + 4
        if self.trusted_peer:
            if b"Q" in body:
                return _TrustedUnpickler(io.BytesIO(body), self).load()
            return _loads(body)
        msg, has_refs = _loads_untrusted(body)
        if type(msg) is not tuple or len(msg) != 3 or msg[0] != _RETURN_T or type(msg[1]) is not int:
            _check_message(msg)
        if self.audit is not None and msg[0] == _CALL_T:
            self._arg_bytes[msg[1]] = size
        if has_refs or size >= _MAX_DEPTH:
            # Depth is at most one level per byte, so small bodies need no walk.
            msg = _codec.resolve(msg, self._resolve_inert)
        return msg

    def _resolve_inert(self, inert: _codec.Inert) -> Any:
        pid = inert.pid
        if type(pid) is not tuple or not pid or type(pid[0]) is not str:
            raise ProtocolError("malformed reference")
        kind = pid[0]
        if kind == "r" and len(pid) == 2:
            eid = pid[1]
            entry = self.tables.exports.get(eid) if type(eid) is int else None
            if entry is None:
                raise ProtocolError(f"reference to unknown export id {safe_repr(eid)}")
            return entry.obj
        if kind == "c" and len(pid) == 4:
            _, eid, key, desc = pid
            if type(eid) is not int or eid <= 0 or type(key) is not int or key <= 0:
                raise ProtocolError("malformed capability reference")
            return self._import(eid, key, None if desc is None else _codec.resolve(desc, _no_refs))
        if kind == "v" and len(pid) == 3:
            _, vkind, payload = pid
            payload = _codec.resolve(payload, self._resolve_inert)
            if vkind == "vt":
                return self._value_from_sandbox(payload)
            return _codec.decode_value_record(vkind, payload)
        raise ProtocolError(f"unknown reference kind {safe_repr(kind)}")

    def _value_from_sandbox(self, payload: Any) -> Any:
        if type(payload) is not tuple or len(payload) != 4 or type(payload[0]) is not str \
                or type(payload[1]) is not tuple or type(payload[2]) is not tuple:
            raise ProtocolError("malformed value type record")
        name, fields, values, _is_tuple = payload
        vt = value_type_named(name)
        if vt is None:
            raise ProtocolError(f"value type {safe_repr(name)} is not registered on the host")
        if fields != vt.fields or len(values) != len(fields):
            raise ProtocolError(f"value type {safe_repr(name)} arrived with other fields than registered")
        try:
            return vt.cls(*values)
        except Exception as exc:
            raise ProtocolError(f"value type {name} rejected its fields: {exc}") from None

    def _import(self, eid: int, key: int, desc: Any) -> Proxy:
        cls = self._peer_classes.get(key)
        if desc is not None:
            if cls is not None:
                raise ProtocolError(f"interface {key} described twice")
            if not self.trusted_peer:
                check_descriptor(desc)
            cls = build_proxy_class(InterfaceDesc(desc), trusted=self.trusted_peer)
            self._peer_classes[key] = cls
        elif cls is None:
            raise ProtocolError(f"reference to undescribed interface {key}")
        chan = self.channel
        return self.tables.imports.receive(eid, lambda entry: _make(cls, chan, entry))

    def proxy_dropped(self, entry: Any) -> None:
        self.tables.imports.dropped(entry)

    def take_releases(self) -> tuple:
        return self.tables.imports.take_releases()

    def handle_release(self, pairs: tuple) -> None:
        for eid, count in pairs:
            if not self.tables.exports.release(eid, count):
                if not self.trusted_peer:
                    raise ProtocolError(f"release of unknown export id {eid} (count {count})")

    # ------------------------------------------------------------------ dispatch

    def dispatch(self, msg: tuple) -> Any:
        """Run an incoming CALL; returns its result or raises what it raised."""
        _, qid, parent, target, op, name, args, kwargs = msg
        self.calls_in += 1
        arg_bytes = self._arg_bytes.pop(qid, 0) if self.audit is not None else 0
        entry = self._export_of(target)
        if op == _OP_CALL and entry is not None and name is not None:
            # The common case first: a plain method call. On the host only for an
            # exposed method of an entry with no revokers, when no audit hook runs.
            if self.trusted_peer:
                if name[:2] != "__":
                    return getattr(entry.target, name)(*args, **kwargs)
            elif not entry.revokers and self.audit is None and name in entry.iface.methods:
                self._local.revokers = entry.revokers
                result = getattr(entry.target, name)(*args, **kwargs)
                if type(result) in _SCALARS or not isinstance(result, types.CoroutineType):
                    return result
                return self.await_coroutine(result, entry, name)
        if target == 0:
            if self.bootstrap is None or not self.trusted_peer:
                raise ProtocolError("call to export 0, which does not exist")
            return self._invoke_trusted(self.bootstrap, op, name, args, kwargs)
        if entry is None:
            raise ProtocolError(f"call to unknown export id {target}")
        if self.trusted_peer:
            return self._invoke_trusted(entry.target, op, name, args, kwargs)
        if entry.revoked:
            raise RevokedError(f"{entry.iface.name if entry.iface else 'capability'} was revoked")
        # Capabilities returned by this call are reached through this entry: they
        # inherit its revokers (the channel restores the previous set afterwards).
        self._local.revokers = entry.revokers
        if self.audit is None:
            return self._invoke_checked(entry, op, name, args, kwargs)
        return self._audited(entry, op, name, args, kwargs, arg_bytes)

    def begin_answer(self) -> frozenset:
        return getattr(self._local, "revokers", frozenset())

    def end_answer(self, saved: frozenset) -> None:
        self._local.revokers = saved

    def _audited(self, entry: Export, op: int, name: Any, args: tuple, kwargs: dict,
                 arg_bytes: int) -> Any:
        start = time.perf_counter()
        outcome = "ok"
        try:
            return self._invoke_checked(entry, op, name, args, kwargs)
        except BaseException as exc:
            outcome = type(exc).__name__
            raise
        finally:
            try:
                self.audit(AuditEvent(  # type: ignore[misc]
                    capability=entry.iface.name if entry.iface else "?",
                    member=name or ("__iter__" if op == _OP_ITER else "__call__"),
                    op=Op(op).name.lower(),
                    arg_bytes=arg_bytes,
                    duration=time.perf_counter() - start,
                    outcome=outcome,
                ))
            except Exception:
                pass

    def _invoke_checked(self, entry: Export, op: int, name: Any, args: tuple, kwargs: dict) -> Any:
        result = self._invoke_member(entry, op, name, args, kwargs)
        if type(result) in _SCALARS or not isinstance(result, types.CoroutineType):
            return result
        return self.await_coroutine(result, entry, name)

    def await_coroutine(self, coro: Any, entry: Export, name: Any) -> Any:
        """Run what an ``async def`` capability returned (AsyncSandbox only)."""
        if self.awaiter is None:
            coro.close()
            raise TypeError(
                f"{entry.iface.name}.{name} is async: async capabilities need an AsyncSandbox"
            )
        return self.awaiter(coro)

    def _invoke_member(self, entry: Export, op: int, name: Any, args: tuple, kwargs: dict) -> Any:
        obj = entry.target
        iface = entry.iface
        if op == _OP_CALL:
            if name is None:
                if not iface.callable:
                    raise TypeError(f"{iface.name} object is not callable")
                return obj(*args, **kwargs)
            if name in iface.methods:
                return getattr(obj, name)(*args, **kwargs)
            if name in iface.dunders:
                if name == "__exit__":
                    return _host_exit(obj, args)
                return getattr(type(obj), name)(obj, *args, **kwargs)
            raise _no_attr(iface, name)
        if op == _OP_GET:
            if name in iface.properties:
                return getattr(obj, name)
            raise _no_attr(iface, name)
        if op == _OP_SET:
            prop = iface.properties.get(name)
            if prop is None:
                raise _no_attr(iface, name)
            if not prop.settable or len(args) != 1:
                raise AttributeError(f"property {name!r} of {iface.name} cannot be set")
            setattr(obj, name, args[0])
            return None
        if op == _OP_ITER:
            if "__iter__" not in iface.dunders:
                raise TypeError(f"{iface.name} object is not iterable")
            return self._start_iter(iter(obj))
        raise ProtocolError(f"unknown op {op}")

    def _invoke_trusted(self, obj: Any, op: int, name: Any, args: tuple, kwargs: dict) -> Any:
        if op == _OP_CALL:
            if name is None:
                return obj(*args, **kwargs)
            if name == "__exit__":
                return _host_exit(obj, args)
            if name.startswith("__") and name.endswith("__"):
                return getattr(type(obj), name)(obj, *args, **kwargs)
            return getattr(obj, name)(*args, **kwargs)
        if op == _OP_GET:
            return getattr(obj, name)
        if op == _OP_SET:
            setattr(obj, name, args[0])
            return None
        if op == _OP_ITER:
            return self._start_iter(iter(obj))
        raise ProtocolError(f"unknown op {op}")

    def _start_iter(self, it: Any) -> tuple:
        first = list(itertools.islice(it, ITER_BATCH))
        if len(first) < ITER_BATCH:
            return (first, None)
        return (first, _Iterator(it))

    def stats(self) -> dict[str, int]:
        return self.tables.stats()


# --------------------------------------------------------------------------- helpers


def _make(cls: type, chan: Any, entry: Any) -> Proxy:
    import weakref

    p = new_proxy(cls, chan, entry)
    entry.proxy = weakref.ref(p)
    return p


def _no_refs(inert: Any) -> Any:
    raise ProtocolError("reference inside an interface descriptor")


def _no_attr(iface: Interface, name: Any) -> AttributeError:
    exposed = ", ".join(iface.exposed_names()) or "nothing"
    return AttributeError(f"{iface.name} has no exposed attribute {name!r}; exposed: {exposed}")


def _host_exit(obj: Any, args: tuple) -> Any:
    info = args[0] if args else None
    if info is None:
        return type(obj).__exit__(obj, None, None, None)
    exc = RemoteError(str(info[0]), str(info[1]))
    return type(obj).__exit__(obj, RemoteError, exc, None)


def _plain_args(args: tuple) -> bool:
    for a in args:
        if type(a) not in _SCALARS:
            return False
    return True


_OWN_DIRS = tuple(
    os.path.dirname(os.path.abspath(p)) + os.sep
    for p in (__file__, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                     "sandbox_vm", "__init__.py"))
)
MAX_FRAMES = 64


def _trim_runtime_frames(exc: BaseException) -> None:
    """Drop the runtime's own frames from the top of a sandbox traceback."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_OWN_DIRS):
        tb = tb.tb_next
    if tb is not None:
        exc.__traceback__ = tb


def _frames_as_data(tb: Any) -> tuple:
    """The traceback as ``((filename, lineno, function), ...)`` (tblib's view, flattened)."""
    from tblib import Traceback

    frames = []
    node = Traceback(tb).as_dict() if tb is not None else None
    while node is not None:
        code = node["tb_frame"]["f_code"]
        frames.append((str(code["co_filename"])[:300], int(node["tb_lineno"] or 0), str(code["co_name"])[:200]))
        node = node["tb_next"]
    return tuple(frames[-MAX_FRAMES:])


def _traceback_text(exc: BaseException) -> str:
    try:
        return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except Exception:
        return ""


def _not_shareable(obj: Any) -> str:
    name = _codec.describe_type(obj)
    return (
        f"{name} cannot cross into the sandbox: it is not a value type and exposes nothing "
        f"(mark methods with @expose, decorate the class with @capability, wrap it with "
        f"facet(obj, 'method', ...), or register it with value_type() if it is plain data)"
    )


class _TrustedUnpickler(pickle.Unpickler):
    """The sandbox's unpickler: the host is trusted, references resolve directly."""

    def __init__(self, file: Any, session: Session) -> None:
        super().__init__(file)
        self._session = session

    def persistent_load(self, pid: Any) -> Any:
        s = self._session
        kind = pid[0]
        if kind == "c":
            return s._import(pid[1], pid[2], pid[3])
        if kind == "r":
            entry = s.tables.exports.get(pid[1])
            if entry is None:
                raise ProtocolError(f"reference to unknown export id {pid[1]}")
            return entry.obj
        if kind == "v" and pid[1] == "vt":
            return _value_in_sandbox(*pid[2])
        if kind == "v" and pid[1] != "vtclass":
            return _codec.decode_value_record(pid[1], pid[2])
        if kind == "v" and pid[1] == "vtclass":
            name, fields, is_tuple = pid[2]
            vt = value_type_named(name)
            if vt is None or vt.fields != tuple(fields):
                return make_lookalike(name, tuple(fields), is_tuple)
            return vt.cls
        if kind == "f":
            return _TrustedUnpickler(io.BytesIO(pid[1]), s).load()
        raise ProtocolError(f"unknown reference kind {kind!r}")


def _vt_record(vt: Any, obj: Any) -> tuple:
    return (vt.name, vt.fields, tuple(getattr(obj, f) for f in vt.fields), vt.is_tuple)


def make_lookalike(name: str, fields: tuple, is_tuple: bool) -> type:
    """A class with the same name and fields as a value type the other side has."""
    short = name.rpartition(".")[2]
    if not short.isidentifier():
        short = "Value"
    if is_tuple:
        import collections

        cls = collections.namedtuple(short, fields)  # type: ignore[misc]
    else:
        cls = dataclasses.make_dataclass(short, list(fields))
    value_type(cls, name=name)
    return cls


def _value_in_sandbox(name: str, fields: tuple, values: tuple, is_tuple: bool = False) -> Any:
    vt = value_type_named(name)
    if vt is None or vt.fields != fields:
        make_lookalike(name, fields, is_tuple)
        vt = value_type_named(name)
    return vt.cls(*values)  # type: ignore[union-attr]


_SANDBOX_IFACES: dict[Any, Interface] = {}
#: Host-side proxies of sandbox objects compare and hash by identity: the host's
#: decoder builds sets and dicts, and must never call into the sandbox to do it.
_IDENTITY_DUNDERS = frozenset({"__eq__", "__ne__", "__hash__"})
_FUNCTIONS = (types.FunctionType, types.BuiltinFunctionType, types.MethodType, types.BuiltinMethodType)
_METHODS = (types.FunctionType, types.BuiltinFunctionType, staticmethod, classmethod,
            types.MethodDescriptorType, types.WrapperDescriptorType)


def _sandbox_interface(obj: Any) -> Interface:
    """Interface of a sandbox object as the host sees it: everything public."""
    if isinstance(obj, types.ModuleType):
        return _module_interface(obj)
    if isinstance(obj, _FUNCTIONS) or isinstance(obj, type):
        return _plain_interface(getattr(obj, "__qualname__", type(obj).__name__), obj, callable_=True)
    t = type(obj)
    iface = _SANDBOX_IFACES.get(t)
    if iface is None:
        iface = _open_interface(t)
        _SANDBOX_IFACES[t] = iface
    return iface


def _doc_of(obj: Any) -> str:
    doc = getattr(obj, "__doc__", None)
    return doc[:4096] if isinstance(doc, str) else ""


def _plain_interface(name: str, obj: Any, *, callable_: bool) -> Interface:
    return Interface(name=str(name)[:200], doc=_doc_of(obj), methods={}, properties={}, dunders={},
                     callable=callable_)


def _open_interface(t: type) -> Interface:
    from inspect import getattr_static

    from ._expose import ALLOWED_DUNDERS, Member

    methods: dict[str, Member] = {}
    dunders: dict[str, Member] = {}
    for name in dir(t):
        if name.startswith("_cb_") or not name.isidentifier():
            continue
        try:
            static = getattr_static(t, name)
        except AttributeError:
            continue
        if name.startswith("__") and name.endswith("__"):
            if name in ALLOWED_DUNDERS and name not in _IDENTITY_DUNDERS and isinstance(
                static, _METHODS
            ) and static is not getattr(object, name, None):
                dunders[name] = Member("", "")
            continue
        if name.startswith("_"):
            continue
        if isinstance(static, _METHODS):
            methods[name] = Member(_doc_of(static), "")
    is_callable = "__call__" in dunders
    dunders.pop("__call__", None)
    return Interface(name=t.__name__[:200], doc=_doc_of(t), methods=methods, properties={},
                     dunders=dunders, callable=is_callable)


def _module_interface(mod: types.ModuleType) -> Interface:
    from ._expose import Member

    methods = {}
    for name, value in list(vars(mod).items()):
        if name.startswith("_") or not name.isidentifier():
            continue
        if isinstance(value, (types.FunctionType, types.BuiltinFunctionType)) or (
            isinstance(value, type)
        ):
            doc = value.__doc__ if isinstance(value.__doc__, str) else ""
            methods[name] = Member(doc[:4096], "")
    return Interface(
        name=f"module {mod.__name__}",
        doc=(mod.__doc__ or "")[:4096] if isinstance(mod.__doc__, str) else "",
        methods=methods,
        properties={},
        dunders={},
    )


def _describe(iface: Interface, open_: bool) -> tuple:
    return (*iface.describe(), open_)
