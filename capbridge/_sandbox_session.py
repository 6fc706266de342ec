"""The sandbox's end of a connection: its peer, the host, is trusted.

Bodies from the host are ordinary pickles (references resolve directly against this
end's tables). Bodies for the host must pass the host's decoder, which accepts only
memo-free plain data, so they are written by C pickler in fast mode; a message the
host would refuse (too deep, too large once decoded, cyclic) fails here first, with
:class:`~capbridge.CapabilityError` at the call site, instead of ending the sandbox.
Sandbox objects are exported with an *open* interface: everything public.
"""

from __future__ import annotations

import io
import os
import pickle
import threading
import types
import weakref
TYPE_CHECKING = False
if TYPE_CHECKING:  # (typing is not imported at run time: it costs start-up)
    from typing import Any

from . import _codec
from ._decoder import COMMON_ANSWERS, MAX_DEPTH, NONE_PAYLOAD, NOT_SMALL, SMALL_INT_PAYLOADS, Budget, decode as _decode
from ._errors import CapabilityError, ProtocolError, RemoteError
from ._expose import ALLOWED_DUNDERS, Interface, Member, value_type, value_type_named, value_type_of
from ._protocol import ANSWER_FRAME, ANSWER_HEADER, CALL_FRAME, CALL_HEADER, HEADER, HELLO_HEADER, Op, Tag
from ._protocol import frame as _frame
from ._proxy import Proxy
from ._session import ITER_IFACE, IterBatches, Session, header, payload_of, start_iter

__all__ = ["SandboxSession", "make_lookalike", "hello_body"]

_CALL_T, _RETURN_T, _RAISE_T, _RELEASE_T, _HELLO_T = (
    int(Tag.CALL), int(Tag.RETURN), int(Tag.RAISE), int(Tag.RELEASE), int(Tag.HELLO))
_OP_CALL, _OP_GET, _OP_SET, _OP_ITER = int(Op.CALL), int(Op.GET), int(Op.SET), int(Op.ITER)
#: What the fast pickler writes itself. Not frozensets: CPython's C pickler, in fast
#: mode, counts one nesting level on entering a frozenset and none on leaving it, so
#: after 50 of them it takes siblings for cycles; they are sent as records instead.
_PLAIN = (_codec.PLAIN_TYPES - {frozenset}) | {pickle.PickleBuffer}
_loads = pickle.loads
_common_answer = COMMON_ANSWERS.get
_pack_call = CALL_HEADER.pack
_pack_call_frame = CALL_FRAME.pack
_pack_answer_frame = ANSWER_FRAME.pack
_pack_length = HEADER.pack
_pack_answer = ANSWER_HEADER.pack
_unpack_call = CALL_HEADER.unpack_from
_unpack_answer = ANSWER_HEADER.unpack_from



def hello_body(version: int, report: Any) -> bytes:
    """The sandbox's first body: HELLO with its start-up report."""
    buf = io.BytesIO()
    buf.write(HELLO_HEADER.pack(_HELLO_T, version))
    p = pickle.Pickler(buf, 5)
    p.fast = True  # memo-free, as the host's decoder requires
    p.dump(report)
    return buf.getvalue()


class _NotPlain(Exception):
    pass


class _GiveUpPickler(pickle.Pickler):
    """The C pickler asks ``reducer_override`` only about objects that are not plain
    data: the first one ends the attempt."""

    def reducer_override(self, obj: Any) -> Any:
        raise _NotPlain


class _FastPickler:
    """Reusable memo-free picklers (what the host's decoder accepts).

    ``plain`` gives up at the first object that is not plain data (the C pickler asks
    ``reducer_override`` only about those); ``hooked`` then writes references and
    value records through ``persistent_id``.
    """

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.reset_plain()
        self.hooked = pickle.Pickler(self.buf, 5)
        self.hooked.fast = True

    def reset_plain(self) -> None:
        """A fresh plain pickler (one that wrote a frozenset miscounts from then on)."""
        self.plain = _GiveUpPickler(self.buf, 5)
        self.plain.fast = True


def _no_pid(obj: Any) -> None:
    return None


class _ListWriter:
    """A file whose ``write`` appends to a list."""

    __slots__ = ("write",)

    def __init__(self, parts: list) -> None:
        self.write = parts.append


def _join_parts(parts: list) -> bytes:
    data = b"".join(parts)
    parts.clear()
    return data


def _as_is(exc: BaseException) -> BaseException:
    return exc


def _at_boundary(exc: BaseException) -> BaseException:
    """Mark an error raised because a value could not cross (not by user code)."""
    exc._cb_boundary = True  # type: ignore[attr-defined]
    return exc


class _Placeholder:
    """Stands for a reference while the sandbox checks a body with the host's decoder."""

    __slots__ = ()


def _placeholder(pid: Any) -> Any:
    return _Placeholder()


class SandboxSession(Session):
    """The sandbox's end: serves the host's calls, bootstrap at export 0."""

    trusted_peer = True

    def __init__(self, *, max_frame: int = 64 * 1024 * 1024, debug: bool = False, bootstrap: Any = None,
                 host_budget: Budget | None = None) -> None:
        super().__init__(max_frame=max_frame, debug=debug)
        self.bootstrap = bootstrap
        #: The budget the host decodes our bodies with (checked before sending).
        self.host_budget = host_budget or Budget()
        self._local = threading.local()
        # For plain_frame: scalars only (no frozensets, no references), so the C
        # pickler hands each pickle to ``write`` in one piece, straight into a list.
        self._parts: list[bytes] = []
        self._direct = pickle.Pickler(_ListWriter(self._parts), 5)
        self._direct.fast = True

    # ------------------------------------------------------------------ outgoing

    def plain_frame(self, msg: tuple) -> bytes:
        """The whole frame (length prefix included) for a CALL or RETURN of scalars.

        Called with the channel's send lock held (it uses one pickler per session).
        """
        parts = self._parts
        tag = msg[0]
        if tag == _CALL_T:
            self._direct.dump((msg[5], msg[6], msg[7]))
            payload = parts.pop() if len(parts) == 1 else _join_parts(parts)
            n = len(payload) + 26
            frame = _pack_call_frame(n, tag, msg[1], msg[2], msg[3], msg[4]) + payload
        else:
            self._direct.dump(msg[2])
            payload = parts.pop() if len(parts) == 1 else _join_parts(parts)
            n = len(payload) + 9
            frame = _pack_answer_frame(n, tag, msg[1]) + payload
        if n > 8192:  # big enough for an int over the host's limit, or the frame's
            return _frame(self.encode(msg))
        self.bytes_out += n + 4
        return frame

    def return_frame(self, qid: int, value: Any) -> bytes:
        """The whole frame for a RETURN of a scalar (:meth:`plain_frame`, unpacked)."""
        if value is None:
            payload = NONE_PAYLOAD
        elif type(value) is int and 0 <= value < 256:
            payload = SMALL_INT_PAYLOADS[value]
        else:
            parts = self._parts
            self._direct.dump(value)
            payload = parts.pop() if len(parts) == 1 else _join_parts(parts)
        n = len(payload) + 9
        if n > 8192:
            return _frame(self.encode((_RETURN_T, qid, value)))
        self.bytes_out += n + 4
        return _pack_answer_frame(n, _RETURN_T, qid) + payload

    def call_frame(self, qid: int, parent: int, target: int, op: int, name: str | None,
                   args: tuple, kwargs: dict) -> bytes:
        """The whole frame for a CALL of scalars (:meth:`plain_frame`, unpacked)."""
        parts = self._parts
        self._direct.dump((name, args, kwargs))
        payload = parts.pop() if len(parts) == 1 else _join_parts(parts)
        n = len(payload) + 26
        if n > 8192:
            return _frame(self.encode((_CALL_T, qid, parent, target, op, name, args, kwargs)))
        self.bytes_out += n + 4
        return _pack_call_frame(n, _CALL_T, qid, parent, target, op) + payload

    def encode_plain(self, msg: tuple) -> bytes:
        """Body for a CALL or RETURN that holds only scalars (the channel checked)."""
        try:
            fp = self._local.fp
        except AttributeError:
            fp = self._local.fp = _FastPickler()
        buf = fp.buf
        buf.seek(0)
        buf.truncate()
        tag = msg[0]
        if tag == _CALL_T:
            buf.write(_pack_call(tag, msg[1], msg[2], msg[3], msg[4]))
            fp.plain.dump((msg[5], msg[6], msg[7]))
        else:
            buf.write(_pack_answer(tag, msg[1]))
            fp.plain.dump(msg[2])
        body = buf.getvalue()
        if len(body) > 8192:  # big enough for an int or string over the host's limits
            try:
                if len(body) > self.max_frame:
                    raise CapabilityError("too large")
                self._precheck(body, CALL_HEADER.size if tag == _CALL_T else ANSWER_HEADER.size)
            except CapabilityError:
                return self.encode(msg)  # which raises it as the caller should see it
        self.bytes_out += len(body) + 4
        return body

    def encode(self, msg: tuple) -> bytes:
        """Body for ``msg``, in the form the host's decoder accepts.

        Raises :class:`CapabilityError` for a value that cannot cross, or that the
        host would refuse (so the caller sees an error instead of the sandbox ending).
        """
        head = header(msg)
        payload = payload_of(msg)
        fp = getattr(self._local, "fp", None)
        if fp is None:
            fp = self._local.fp = _FastPickler()
        buf = fp.buf
        buf.seek(0)
        buf.truncate()
        buf.write(head)
        made: list = []
        try:
            try:
                fp.plain.dump(payload)
                body = buf.getvalue()
                if body.find(b"\x91", len(head)) >= 0:  # maybe a frozenset (see _PLAIN)
                    raise _NotPlain
                pending: list[int] = []
            except (_NotPlain, ValueError, KeyError):
                fp.reset_plain()
                body, pending = self._encode_hooked(fp, head, payload, made)
            self._precheck(body, len(head))
            if len(body) > self.max_frame:
                raise CapabilityError(
                    f"message of {len(body)} bytes exceeds the limit of {self.max_frame} bytes "
                    "(Limits.max_message_mb)"
                )
        except BaseException as exc:
            for entry in made:  # nothing was sent: take back what this body exported
                self.tables.exports.release(entry.id, 1)
            # A reply that cannot cross fails the host's call with CapabilityError; a
            # call from sandbox code fails there, as an error of that code.
            mark = _at_boundary if msg[0] == _RETURN_T else _as_is
            if isinstance(exc, RecursionError):
                raise mark(CapabilityError(
                    f"a value nested deeper than {MAX_DEPTH} levels cannot cross to the host")) from None
            if isinstance(exc, ValueError) and "cyclic" in str(exc):
                raise mark(CapabilityError(
                    "a value that contains itself (a cycle) cannot cross to the host")) from None
            if isinstance(exc, CapabilityError):
                mark(exc)
            raise
        self.interfaces_sent(pending)
        self.bytes_out += len(body) + 4
        return body

    def _encode_hooked(self, fp: "_FastPickler", head: bytes, payload: Any, made: list) -> tuple[bytes, list[int]]:
        pending: list[int] = []

        def pid(obj: Any) -> Any:
            return self.pid_out(obj, made, pending)

        buf = fp.buf
        buf.seek(0)
        buf.truncate()
        buf.write(head)
        p = fp.hooked
        p.persistent_id = pid
        try:
            p.dump(payload)
        finally:
            p.persistent_id = _no_pid
        return buf.getvalue(), pending

    def _precheck(self, body: bytes, start: int) -> None:
        """Refuse here what the host's decoder would refuse (it would end the sandbox):
        by running that decoder (about a millisecond for 16 MiB of bytes)."""
        if len(body) - start < MAX_DEPTH:
            return  # too short to nest that deep or to be over any budget
        try:
            _decode(body, _placeholder, self.host_budget, start)
        except ProtocolError as exc:
            raise CapabilityError(f"the host would refuse this value: {exc}") from None

    def pid_out(self, obj: Any, made: list | None, pending: list | None) -> Any:
        t = type(obj)
        if t in _PLAIN:
            return None
        if t is frozenset:  # as a set: the host checks its items as it builds any set
            return ("v", "frozenset", set(obj))
        record = _codec.encode_value_record(obj)
        if record is not None:
            return record
        if isinstance(obj, Proxy):
            if obj._cb_chan is not self.channel:
                raise CapabilityError("a proxy from another connection cannot be passed here")
            return ("r", obj._cb_id)
        vt = value_type_of(t)
        if vt is not None:
            return ("v", "vt", (vt.name, vt.fields, tuple(getattr(obj, f) for f in vt.fields), vt.is_tuple))
        iface = ITER_IFACE if t is IterBatches else sandbox_interface(obj)
        entry = self.tables.exports.export(obj, obj, iface, None)
        if made is not None:
            made.append(entry)
        key, describe = self.interface_key(iface, pending)
        return ("c", entry.id, key, (*iface.describe(), t is not IterBatches) if describe else None)

    def raise_body(self, qid: int, exc: BaseException) -> bytes:
        return self.encode((_RAISE_T, qid, self.error_data(exc)))

    def release_body(self, pairs: tuple) -> bytes:
        return self.encode((_RELEASE_T, pairs))

    def error_data(self, exc: BaseException) -> tuple:
        """An exception as plain data: (type name, args, message, traceback text, extra)."""
        t = type(exc)
        name = t.__name__
        if isinstance(exc, RemoteError):
            name = exc.type_name
        elif t.__module__ not in ("builtins", "capbridge"):
            name = f"{t.__module__}.{t.__qualname__}"
        args = exc.args if all(type(a) in _codec.SCALARS for a in exc.args) else (str(exc),)
        try:
            message = str(exc)
        except Exception:
            message = f"<unprintable {t.__name__}>"
        if not self.debug:
            trim_own_frames(exc)
        extra: dict[str, Any] = {"frames": frames_as_data(exc.__traceback__)}
        if getattr(exc, "_cb_boundary", False):
            extra["boundary"] = True
        if isinstance(exc, OSError):
            for attr in ("filename", "filename2"):
                v = getattr(exc, attr, None)
                if type(v) in (str, bytes, int):
                    extra[attr] = v[:4096] if type(v) is not int else v
        tb = _traceback_text(exc)
        return (name[:200], args[:16], message[:65536], tb[-262144:], extra)

    # ------------------------------------------------------------------ incoming

    def decode(self, body: Any, base: int = 0) -> tuple:
        """The host's message in ``body[base:]`` (trusted: references resolve directly)."""
        n = len(body)
        self.bytes_in += n - base + 4
        tag = body[base]
        if tag == _RETURN_T or tag == _RAISE_T:
            if n - base < 15 and type(body) is bytes:
                value = _common_answer(body[base + 9:], NOT_SMALL)
                if value is not NOT_SMALL:
                    return (tag, _unpack_answer(body, base)[1], value)
            if n < 4096 and body.find(b"Q", base + 9) < 0:
                return (tag, _unpack_answer(body, base)[1], _loads(body[base + 9:]))
            return (tag, _unpack_answer(body, base)[1], self._load(body, base + 9))
        if tag == _CALL_T:
            if n < 4096 and body.find(b"Q", base + 26) < 0:
                return (*_unpack_call(body, base), *_loads(body[base + 26:]))
            return (*_unpack_call(body, base), *self._load(body, base + 26))
        if tag == _RELEASE_T:
            return (tag, self._load(body, base + 1))
        raise ProtocolError(f"unexpected message tag {tag} from the host")

    def _load(self, body: Any, start: int) -> Any:
        if body.find(b"Q", start) >= 0:
            return _TrustedUnpickler(io.BytesIO(memoryview(body)[start:]), self).load()
        return _loads(body[start:] if len(body) - start < 4096 else memoryview(body)[start:])

    # ------------------------------------------------------------------ dispatch

    def dispatch(self, msg: tuple) -> Any:
        """Run the host's CALL; returns its result or raises what it raised."""
        _, qid, parent, target, op, name, args, kwargs = msg
        self.calls_in += 1
        if target == 0:
            if self.bootstrap is None:
                raise ProtocolError("call to export 0, which does not exist")
            return _invoke_open(self.bootstrap, op, name, args, kwargs)
        entry = self._export_of(target)
        if entry is None:
            raise ProtocolError(f"call to unknown export id {target}")
        if op == _OP_CALL and name is not None and name[:2] != "__":
            return getattr(entry.target, name)(*args, **kwargs)
        return _invoke_open(entry.target, op, name, args, kwargs)


def _invoke_open(obj: Any, op: int, name: Any, args: tuple, kwargs: dict) -> Any:
    if op == _OP_CALL:
        if name is None:
            return obj(*args, **kwargs)
        if name == "__exit__":
            info = args[0] if args else None
            if info is None:
                return type(obj).__exit__(obj, None, None, None)
            exc = RemoteError(str(info[0]), str(info[1]))
            return type(obj).__exit__(obj, RemoteError, exc, None)
        if name.startswith("__") and name.endswith("__"):
            return getattr(type(obj), name)(obj, *args, **kwargs)
        return getattr(obj, name)(*args, **kwargs)
    if op == _OP_GET:
        return getattr(obj, name)
    if op == _OP_SET:
        setattr(obj, name, args[0])
        return None
    if op == _OP_ITER:
        return start_iter(iter(obj))
    raise ProtocolError(f"unknown op {op}")


class _TrustedUnpickler(pickle.Unpickler):
    """The sandbox's unpickler: the host is trusted, references resolve directly."""

    def __init__(self, file: Any, session: SandboxSession) -> None:
        super().__init__(file)
        self._session = session

    def persistent_load(self, pid: Any) -> Any:
        s = self._session
        kind = pid[0]
        if kind == "c":
            return s.import_ref(pid[1], pid[2], pid[3])
        if kind == "r":
            entry = s.tables.exports.get(pid[1])
            if entry is None:
                raise ProtocolError(f"reference to unknown export id {pid[1]}")
            return entry.obj
        if kind == "v":
            if pid[1] == "vt":
                return _value_in_sandbox(*pid[2])
            if pid[1] == "vtclass":
                name, fields, is_tuple = pid[2]
                vt = value_type_named(name)
                if vt is None or vt.fields != tuple(fields):
                    return make_lookalike(name, tuple(fields), is_tuple)
                return vt.cls
            return _codec.decode_value_record(pid[1], pid[2])
        if kind == "f":
            return _TrustedUnpickler(io.BytesIO(pid[1]), s).load()
        raise ProtocolError(f"unknown reference kind {kind!r}")


def make_lookalike(name: str, fields: tuple, is_tuple: bool) -> type:
    """A class with the same name and fields as a value type the other side has."""
    short = name.rpartition(".")[2]
    if not short.isidentifier():
        short = "Value"
    if is_tuple:
        import collections

        cls = collections.namedtuple(short, fields)  # type: ignore[misc]
    else:
        import dataclasses

        cls = dataclasses.make_dataclass(short, list(fields))
    value_type(cls, name=name)
    return cls


def _value_in_sandbox(name: str, fields: tuple, values: tuple, is_tuple: bool = False) -> Any:
    vt = value_type_named(name)
    if vt is None or vt.fields != fields:
        make_lookalike(name, fields, is_tuple)
        vt = value_type_named(name)
    return vt.cls(*values)  # type: ignore[union-attr]


# --------------------------------------------------------------------------- tracebacks

_OWN_DIRS = tuple(
    os.path.dirname(os.path.abspath(p)) + os.sep
    for p in (__file__, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                     "sandbox_vm", "__init__.py"))
)
MAX_FRAMES = 64
MAX_LINE = 1000


def trim_own_frames(exc: BaseException) -> None:
    """Drop capbridge's and the runtime's own frames from a sandbox traceback, so it
    shows the user's code only (``debug=True`` keeps them)."""
    from ._tracebacks import strip_frames

    strip_frames(exc, _OWN_DIRS)


#: Source lines of the code the host sent, by code object (weakly: an entry lives as
#: long as the code it describes). Runs often share a file name (``<sandbox>``); a
#: frame's own code object finds the lines it was compiled from.
_CODE_LINES: "weakref.WeakKeyDictionary[types.CodeType, list[str]]" = weakref.WeakKeyDictionary()
MAX_CODES_PER_RUN = 10_000


def remember_code_lines(code: types.CodeType, lines: list[str]) -> None:
    """Tie ``lines`` to ``code`` and every code object compiled within it."""
    _CODE_LINES[code] = lines
    todo = [k for k in code.co_consts if type(k) is types.CodeType]
    seen = 1
    while todo and seen < MAX_CODES_PER_RUN:
        c = todo.pop()
        seen += 1
        _CODE_LINES[c] = lines
        todo.extend(k for k in c.co_consts if type(k) is types.CodeType)


def _source_line(code: types.CodeType, lineno: int) -> str:
    import linecache

    lines = _CODE_LINES.get(code)
    if lines is not None:
        return lines[lineno - 1] if 0 < lineno <= len(lines) else ""
    return linecache.getline(code.co_filename, lineno)


def frames_as_data(tb: Any) -> tuple:
    """The traceback as ``((filename, lineno, function, source line), ...)``."""
    frames = []
    while tb is not None:
        code = tb.tb_frame.f_code
        lineno = tb.tb_lineno or 0
        line = _source_line(code, lineno).strip()
        frames.append((str(code.co_filename)[:300], int(lineno), str(code.co_name)[:200], line[:MAX_LINE]))
        tb = tb.tb_next
    return tuple(frames[-MAX_FRAMES:])


def _traceback_text(exc: BaseException) -> str:
    try:
        import traceback

        return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except Exception:
        return ""


# --------------------------------------------------------------------------- open interfaces

_SANDBOX_IFACES: dict[Any, Interface] = {}
#: Host-side proxies of sandbox objects compare and hash by identity: the host's
#: decoder builds sets and dicts, and must never call into the sandbox to do it.
_IDENTITY_DUNDERS = frozenset({"__eq__", "__ne__", "__hash__"})
_FUNCTIONS = (types.FunctionType, types.BuiltinFunctionType, types.MethodType, types.BuiltinMethodType)
_METHODS = (types.FunctionType, types.BuiltinFunctionType, staticmethod, classmethod,
            types.MethodDescriptorType, types.WrapperDescriptorType)


def sandbox_interface(obj: Any) -> Interface:
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
    methods = {}
    for name, value in list(vars(mod).items()):
        if name.startswith("_") or not name.isidentifier():
            continue
        if isinstance(value, (types.FunctionType, types.BuiltinFunctionType)) or isinstance(value, type):
            methods[name] = Member(_doc_of(value), "")
    return Interface(
        name=f"module {mod.__name__}",
        doc=_doc_of(mod),
        methods=methods,
        properties={},
        dunders={},
    )
