"""The host's end of a connection: it trusts nothing the sandbox sends.

* **Incoming** bodies go through :func:`capbridge._protocol.split` (the header) and
  :mod:`capbridge._decoder` (the payload), with a budget per message. A reference is
  resolved the moment it is decoded, against this connection's own tables, and by the
  membrane rules of the capability the call is addressed to (the header names it
  before the payload is read): a handle to a revoked export fails the call with
  :class:`~capbridge.RevokedError`; a sandbox object handed in through a revocable is
  wrapped so it stops working on revoke.
* **Dispatch** reaches only what the target's interface exposes.
* **Outgoing** bodies are ordinary pickles; capabilities are exported, through the
  membrane of the call being answered when there is one, and anything that is neither
  a value nor a capability fails with :class:`~capbridge.CapabilityError`.
"""

from __future__ import annotations

import builtins
import functools
import io
import pickle
import time
import types
from typing import Any, Callable

from . import _codec
from ._decoder import COMMON_ANSWERS, NONE_PAYLOAD, NOT_SMALL, SMALL_INT_PAYLOADS, Budget, decode as _decode, small_answer, small_call
from ._errors import CapabilityError, ProtocolError, RemoteError, RevokedError, safe_repr
from ._expose import Interface, interface_of, value_type_named, value_type_of
from ._membrane import Bound, InboundProxy, Membrane
from ._protocol import (ANSWER_FRAME, ANSWER_HEADER, CALL_FRAME, CALL_HEADER, MAX_ID, Op, Tag, check_call_payload,
                        check_release, frame as _frame, split)
from ._proxy import Proxy, check_descriptor
from ._audit import AuditEvent
from ._session import ITER_IFACE, IterBatches, Session, header, payload_of, start_iter
from ._tables import Export

__all__ = ["HostSession", "ShippedCall"]

_CALL_T, _RETURN_T, _RAISE_T, _RELEASE_T, _HELLO_T = (
    int(Tag.CALL), int(Tag.RETURN), int(Tag.RAISE), int(Tag.RELEASE), int(Tag.HELLO))
_OP_CALL, _OP_GET, _OP_SET, _OP_ITER = int(Op.CALL), int(Op.GET), int(Op.SET), int(Op.ITER)
_SCALARS = _codec.SCALARS
_PLAIN = _codec.PLAIN_TYPES | {pickle.PickleBuffer}
_RECORDS = _codec.STDLIB_VALUE_TYPES
_dumps = pickle.dumps
_pack_call = CALL_HEADER.pack
_pack_answer = ANSWER_HEADER.pack
_pack_call_frame = CALL_FRAME.pack
_unpack_call = CALL_HEADER.unpack_from
_unpack_answer = ANSWER_HEADER.unpack_from
_MAX_ID = MAX_ID
_OPS = frozenset(int(o) for o in Op)
_pack_answer_frame = ANSWER_FRAME.pack
_common_answer = COMMON_ANSWERS.get
#: CALL frame bodies of at most _MEMO_CALL bytes are remembered once small_call read
#: them, at most MAX_CALL_MEMO per connection (then the memo starts again): at most
#: about 180 KiB of host memory, whatever the sandbox sends (sixteen one-character
#: str arguments each, the most objects such a payload makes).
MAX_CALL_MEMO = 128
_MEMO_CALL = 26 + 96


class ShippedCall:
    """``Sandbox.call``'s function and arguments, shipped by value with cloudpickle."""

    __slots__ = ("fn", "args", "kwargs")

    def __init__(self, fn: Any, args: tuple, kwargs: dict) -> None:
        self.fn, self.args, self.kwargs = fn, args, kwargs


class Refused:
    """CALL arguments that could not be resolved: the call fails with ``exc``."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class _NotPlain(Exception):
    pass


class _PlainPickler(pickle.Pickler):
    """Pickles plain data at C speed and gives up at the first object that is not
    (the C pickler asks ``reducer_override`` only about those)."""

    def reducer_override(self, obj: Any) -> Any:
        raise _NotPlain


def _no_refs(pid: Any) -> Any:
    raise ProtocolError("a reference where only plain data may be")


class HostSession(Session):
    """The host's end of one sandbox's connection."""

    trusted_peer = False

    def __init__(
        self,
        *,
        max_frame: int = 64 * 1024 * 1024,
        debug: bool = False,
        allow_modules: tuple[str, ...] = (),
        audit: Callable[[AuditEvent], None] | None = None,
        awaiter: Callable[[Any], Any] | None = None,
        max_decoded: int | None = None,
    ) -> None:
        super().__init__(max_frame=max_frame, debug=debug)
        self.allow_modules = frozenset(allow_modules)
        self.audit = audit
        self.awaiter = awaiter
        budget = Budget(stop=self._stopped)
        if max_decoded is not None:
            budget.max_bytes = max_decoded
        self.budget = budget
        self._arg_bytes: dict[int, int] = {}  # qid -> body size, for the audit hook
        #: Method names seen in calls, as bytes -> str (see _decoder.small_call).
        self._names: dict[bytes, str] = {}
        #: Short CALL payloads small_call read, as bytes -> (name, args): the same
        #: bytes read the same, and a hot call repeats its bytes (see MAX_CALL_MEMO).
        self._calls: dict[bytes, tuple] = {}

    def _stopped(self) -> BaseException | None:
        chan = self.channel
        return None if chan is None else chan.dead

    # ------------------------------------------------------------------ outgoing

    def plain_frame(self, msg: tuple) -> bytes:
        """The whole frame (length prefix included) for a CALL or RETURN of scalars."""
        tag = msg[0]
        if tag == _RETURN_T:
            payload = _dumps(msg[2], 5)
            n = len(payload) + 9
            frame = _pack_answer_frame(n, tag, msg[1]) + payload
        elif tag == _CALL_T:
            payload = _dumps((msg[5], msg[6], msg[7]), 5)
            n = len(payload) + 26
            frame = _pack_call_frame(n, tag, msg[1], msg[2], msg[3], msg[4]) + payload
        else:
            body = self.encode_plain(msg)
            return _frame(body)
        if n > self.max_frame:
            self._checked_size(frame[4:])
        self.bytes_out += n + 4
        return frame

    def return_frame(self, qid: int, value: Any) -> bytes:
        """The whole frame for a RETURN of a scalar (:meth:`plain_frame`, unpacked)."""
        if value is None:
            payload = NONE_PAYLOAD
        elif type(value) is int and 0 <= value < 256:
            payload = SMALL_INT_PAYLOADS[value]
        else:
            payload = _dumps(value, 5)
        n = len(payload) + 9
        frame = _pack_answer_frame(n, _RETURN_T, qid) + payload
        if n > self.max_frame:
            self._checked_size(frame[4:])
        self.bytes_out += n + 4
        return frame

    def call_frame(self, qid: int, parent: int, target: int, op: int, name: str | None,
                   args: tuple, kwargs: dict) -> bytes:
        """The whole frame for a CALL of scalars (:meth:`plain_frame`, unpacked)."""
        payload = _dumps((name, args, kwargs), 5)
        n = len(payload) + 26
        frame = _pack_call_frame(n, _CALL_T, qid, parent, target, op) + payload
        if n > self.max_frame:
            self._checked_size(frame[4:])
        self.bytes_out += n + 4
        return frame

    def encode_plain(self, msg: tuple) -> bytes:
        """Body for a message that holds only scalars."""
        tag = msg[0]
        if tag == _CALL_T:
            body = _pack_call(tag, msg[1], msg[2], msg[3], msg[4]) + _dumps((msg[5], msg[6], msg[7]), 5)
        elif tag == _RETURN_T or tag == _RAISE_T:
            body = _pack_answer(tag, msg[1]) + _dumps(msg[2], 5)
        else:
            body = header(msg) + _dumps(payload_of(msg), 5)
        if len(body) > self.max_frame:
            self._checked_size(body)
        self.bytes_out += len(body) + 4
        return body

    def encode(self, msg: tuple) -> bytes:
        """Body for ``msg``; raises :class:`CapabilityError` for what may not cross.

        Called with the channel's send lock held, so interface descriptors reach the
        sandbox in the order they were first referenced. Results of a call answered
        through a membrane leave through that membrane (the answer table says which).
        """
        head = header(msg)
        payload = payload_of(msg)
        buf = io.BytesIO()
        buf.write(head)
        try:
            _PlainPickler(buf, 5).dump(payload)
            return self._checked_size(buf.getvalue())
        except _NotPlain:
            pass
        except RecursionError:
            raise CapabilityError("a value nested too deeply to send into the sandbox") from None
        membrane = self.tables.answers.get(msg[1]) if msg[0] == _RETURN_T else None
        if type(membrane) is not Membrane:
            membrane = None
        made: list[Export] = []
        pending: list[int] = []
        buf = io.BytesIO()
        buf.write(head)
        p = pickle.Pickler(buf, 5)
        p.persistent_id = lambda obj: self.pid_out(obj, membrane, made, pending)
        try:
            p.dump(payload)
            body = self._checked_size(buf.getvalue())
        except BaseException as exc:
            for entry in made:  # nothing was sent: take back what this body exported
                self.tables.exports.release(entry.id, 1)
            if isinstance(exc, RecursionError):
                raise CapabilityError("a value nested too deeply to send into the sandbox") from None
            raise
        self.interfaces_sent(pending)
        return body

    def _checked_size(self, body: bytes) -> bytes:
        if len(body) > self.max_frame:
            raise CapabilityError(
                f"message of {len(body)} bytes exceeds the limit of {self.max_frame} bytes "
                "(Limits.max_message_mb)"
            )
        self.bytes_out += len(body) + 4
        return body

    def pid_out(self, obj: Any, membrane: Membrane | None, made: list, pending: list) -> Any:
        """The persistent id for ``obj`` in an outgoing body (None: pickle it as is).

        Capabilities are exported (through ``membrane`` when the body answers a call
        made through one); ``made`` and ``pending`` collect this body's exports and
        new interface keys, so a body that is not sent can be taken back.
        """
        t = type(obj)
        if t in _PLAIN:
            return None
        if t in _RECORDS or _codec.is_ndarray(obj):
            return _codec.encode_value_record(obj)
        if t is InboundProxy:  # (before Proxy: it passes for one)
            return ("r", self._own_proxy(obj._cb_live())._cb_id)
        if isinstance(obj, Proxy):
            return ("r", self._own_proxy(obj)._cb_id)
        if t is ShippedCall:
            from ._shipping import ship

            return ("f", ship(obj, self, made, pending))
        vt = value_type_of(t)
        if vt is not None:
            return ("v", "vt", (vt.name, vt.fields, tuple(getattr(obj, f) for f in vt.fields), vt.is_tuple))
        if membrane is not None:
            obj = membrane.wrap_out(obj)
        return self.export(obj, made, pending)

    def _own_proxy(self, proxy: Proxy) -> Proxy:
        if proxy._cb_chan is not self.channel:
            raise CapabilityError("a proxy from another sandbox cannot be passed to this one")
        return proxy

    def export(self, obj: Any, made: list | None, pending: list | None) -> tuple:
        """Export capability ``obj``; its ``("c", id, key, descriptor)`` id."""
        if isinstance(obj, Bound):
            entry = self.tables.exports.export(obj, None, obj._cb_iface, obj._cb_membrane)
        else:
            iface = ITER_IFACE if type(obj) is IterBatches else interface_of(obj)
            if iface is None:
                raise CapabilityError(_not_shareable(obj))
            entry = self.tables.exports.export(obj, obj, iface, None)
        if made is not None:
            made.append(entry)
        iface = entry.iface
        key, describe = self.interface_key(iface, pending)
        return ("c", entry.id, key, (*iface.describe(), False) if describe else None)

    def raise_body(self, qid: int, exc: BaseException) -> bytes:
        return self.encode_plain((_RAISE_T, qid, self.error_data(exc)))

    def release_body(self, pairs: tuple) -> bytes:
        return self.encode_plain((_RELEASE_T, pairs))

    def error_data(self, exc: BaseException) -> tuple:
        """A host exception as plain data for the sandbox (no traceback unless debug)."""
        t = type(exc)
        name = t.__name__
        if isinstance(exc, RemoteError):
            name = exc.type_name
        elif t.__module__ not in ("builtins", "capbridge"):
            name = f"{t.__module__}.{t.__qualname__}"
        args = exc.args if all(type(a) in _SCALARS for a in exc.args) else (str(exc),)
        try:
            message = str(exc)
        except Exception:
            message = f"<unprintable {t.__name__}>"
        tb = ""
        if self.debug:
            import traceback

            try:
                tb = "".join(traceback.format_exception(t, exc, exc.__traceback__))
            except Exception:
                tb = ""
        extra: dict[str, Any] = {}
        if isinstance(exc, OSError):
            for attr in ("filename", "filename2"):
                v = getattr(exc, attr, None)
                if type(v) in (str, bytes, int):
                    extra[attr] = v
        return (name, args, message[:65536], tb[:262144], extra)

    # ------------------------------------------------------------------ incoming

    def decode(self, body: Any, base: int = 0) -> tuple:
        """The message in ``body[base:]``, checked, with every reference resolved."""
        n = len(body)
        self.bytes_in += n - base + 4
        tag = body[base] if n > base else 0
        # The two common messages first, read inline; anything else (or anything
        # wrong) goes through split(), which names the fault.
        if tag == _CALL_T and n - base >= 26:
            _, qid, parent, target, op = _unpack_call(body, base)
            if 0 < qid < _MAX_ID and parent < _MAX_ID and target < _MAX_ID and op in _OPS:
                memo = n - base <= _MEMO_CALL and type(body) is bytes and self.audit is None
                if memo:  # a short payload read before reads again as it did then
                    key = body[base + 26:]
                    seen = self._calls.get(key)
                    if seen is not None:
                        return (_CALL_T, qid, parent, target, op, seen[0], seen[1], {})
                payload = small_call(body, base + 26, n, self._names)
                if payload is not None and self.audit is None:
                    if memo:
                        calls = self._calls
                        if len(calls) >= MAX_CALL_MEMO:
                            calls.clear()
                        calls[key] = payload[:2]
                    return (_CALL_T, qid, parent, target, op, payload[0], payload[1], payload[2])
        elif tag == _RETURN_T and n - base >= 9:
            qid = _unpack_answer(body, base)[1]
            if 0 < qid < _MAX_ID:
                if n - base < 15 and type(body) is bytes:  # one of the commonest answers?
                    value = _common_answer(body[base + 9:], NOT_SMALL)
                    if value is not NOT_SMALL:
                        return (_RETURN_T, qid, value)
                value = small_answer(body, base + 9, n)
                if value is not NOT_SMALL:
                    return (_RETURN_T, qid, value)
        if base:
            body = body[base:]
        return self._decode(body, len(body))

    def _decode(self, body: Any, n: int) -> tuple:
        head, start = split(body)
        tag = head[0]
        budget = self.budget
        if tag == _RETURN_T:
            try:
                return (_RETURN_T, head[1], _decode(body, self._ref, budget, start))
            except RevokedError as exc:
                return (_RAISE_T, head[1], exc)
        if tag == _CALL_T:
            _, qid, parent, target, op = head
            payload = small_call(body, start, n, self._names)
            if payload is not None:
                name, args, kwargs = payload
            else:
                entry = self._export_of(target) if target else None
                membrane = entry.membrane if entry is not None else None
                ref = self._ref if membrane is None else functools.partial(self._ref, membrane=membrane)
                try:
                    name, args, kwargs = check_call_payload(_decode(body, ref, budget, start))
                except RevokedError as exc:
                    name, args, kwargs = None, Refused(exc), {}
            if self.audit is not None:
                self._arg_bytes[qid] = n
            return (_CALL_T, qid, parent, target, op, name, args, kwargs)
        if tag == _RAISE_T:
            return (_RAISE_T, head[1], _decode(body, _no_refs, budget, start))
        if tag == _RELEASE_T:
            return (_RELEASE_T, check_release(_decode(body, _no_refs, budget, start)))
        return (_HELLO_T, head[1], _decode(body, _no_refs, budget, start))

    def _ref(self, pid: tuple, membrane: Membrane | None = None) -> Any:
        """What persistent id ``pid`` from the sandbox stands for (see the module doc)."""
        kind = pid[0]
        if kind == "r" and len(pid) == 2:
            eid = pid[1]
            entry = self._export_of(eid) if type(eid) is int else None
            if entry is None:
                raise ProtocolError(f"reference to unknown export id {safe_repr(eid)}")
            if entry.membrane is None:
                return entry.obj  # our own object, back as itself
            raw = entry.obj._cb_live()  # RevokedError: the call fails at its call site
            return raw if entry.membrane is membrane else entry.obj
        if kind == "c" and len(pid) == 4:
            _, eid, key, desc = pid
            if type(eid) is not int or eid <= 0 or type(key) is not int or key <= 0:
                raise ProtocolError("malformed capability reference")
            proxy = self.import_ref(eid, key, desc)
            return proxy if membrane is None else membrane.wrap_in(proxy)
        if kind == "v" and len(pid) == 3:
            _, vkind, payload = pid
            if vkind == "vt":
                return _value_from_sandbox(payload)
            return _codec.decode_value_record(vkind, payload)
        if type(kind) is not str:
            raise ProtocolError("malformed reference")
        raise ProtocolError(f"unknown reference kind {safe_repr(kind)}")

    def _check_descriptor(self, desc: Any) -> None:
        check_descriptor(desc)

    def _bad_release(self, eid: int, count: int) -> None:
        raise ProtocolError(f"release of unknown export id {eid} (count {count})")

    # ------------------------------------------------------------------ dispatch

    def dispatch(self, msg: tuple) -> Any:
        """Run an incoming CALL; returns its result or raises what it raised."""
        _, qid, parent, target, op, name, args, kwargs = msg
        self.calls_in += 1
        if type(args) is Refused:
            raise args.exc
        entry = self._export_of(target)
        if entry is None:
            if target == 0:
                raise ProtocolError("call to export 0, which does not exist")
            raise ProtocolError(f"call to unknown export id {target}")
        membrane = entry.membrane
        if membrane is None:
            obj = entry.target
        else:
            obj = entry.obj._cb_live()
            # What this call returns leaves through the same membrane.
            self.tables.answers[qid] = membrane
        if op == _OP_CALL and self.audit is None and name in entry.iface.methods:
            # The common case: an exposed method (of a plain export, or of a facet's).
            result = getattr(obj, name)(*args, **kwargs)
            if type(result) in _SCALARS or not isinstance(result, types.CoroutineType):
                return result
            return self.await_coroutine(result, entry, name)
        if self.audit is None:
            return self._invoke(entry, obj, op, name, args, kwargs)
        return self._audited(entry, obj, op, name, args, kwargs, self._arg_bytes.pop(qid, 0))

    def _audited(self, entry: Export, obj: Any, op: int, name: Any, args: tuple, kwargs: dict,
                 arg_bytes: int) -> Any:
        start = time.perf_counter()
        outcome = "ok"
        try:
            return self._invoke(entry, obj, op, name, args, kwargs)
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

    def _invoke(self, entry: Export, obj: Any, op: int, name: Any, args: tuple, kwargs: dict) -> Any:
        result = _invoke_member(obj, entry.iface, op, name, args, kwargs)
        if type(result) in _SCALARS or not isinstance(result, types.CoroutineType):
            return result
        return self.await_coroutine(result, entry, name)

    def await_coroutine(self, coro: Any, entry: Export, name: Any) -> Any:
        """Run what an ``async def`` capability returned (AsyncSandbox only)."""
        if self.awaiter is None:
            coro.close()
            label = entry.iface.name if name is None else f"{entry.iface.name}.{name}"
            raise TypeError(f"{label} is async: async capabilities need an AsyncSandbox")
        return self.awaiter(coro)


def _invoke_member(obj: Any, iface: Interface, op: int, name: Any, args: tuple, kwargs: dict) -> Any:
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
        return start_iter(iter(obj))
    raise ProtocolError(f"unknown op {op}")


def _no_attr(iface: Interface, name: Any) -> AttributeError:
    exposed = ", ".join(iface.exposed_names()) or "nothing"
    return AttributeError(f"{iface.name} has no exposed attribute {safe_repr(name)}; exposed: {exposed}")


def _host_exit(obj: Any, args: tuple) -> Any:
    """``__exit__`` of a host context manager used in a sandbox ``with`` block.

    A built-in exception type raised in the block arrives as itself (with its
    message); any other type as RemoteError.
    """
    info = args[0] if args else None
    if info is None:
        return type(obj).__exit__(obj, None, None, None)
    if (type(info) is not tuple or len(info) not in (2, 3) or type(info[0]) is not str
            or type(info[1]) is not str):
        raise TypeError("__exit__ takes (type name, message[, args]) or None")
    name, message = info[0][:200], info[1][:65536]
    plain = info[2] if len(info) == 3 else ()
    if not (type(plain) is tuple and len(plain) <= 8 and all(
            type(a) in (str, int, float, bool, type(None)) and (type(a) is not str or len(a) <= 4096)
            for a in plain)):
        plain = ()
    cls = getattr(builtins, name, None)
    exc: BaseException
    if isinstance(cls, type) and issubclass(cls, Exception) and cls.__module__ == "builtins":
        try:
            exc = cls(*plain) if plain else cls(message)
        except Exception:
            exc = RemoteError(name, message)
    else:
        exc = RemoteError(name, message)
    return type(obj).__exit__(obj, type(exc), exc, None)


def _value_from_sandbox(payload: Any) -> Any:
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
        raise ProtocolError(f"value type {name} rejected its fields: {str(exc)[:200]}") from None


def _not_shareable(obj: Any) -> str:
    name = _codec.describe_type(obj)
    return (
        f"{name} cannot cross into the sandbox: it is not a value type and exposes nothing "
        f"(mark methods with @expose, decorate the class with @capability, wrap it with "
        f"facet(obj, 'method', ...), or register it with value_type() if it is plain data)"
    )
