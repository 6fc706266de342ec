"""Proxies: local stand-ins for objects on the other side.

The first reference to a capability carries its interface, so a proxy class is built
once per interface and ``dir()``, ``help()``, ``hasattr()`` and the "no exposed
attribute" error need no round trip. Proxies have no public constructor: only the
import table makes them.
"""

from __future__ import annotations

import keyword
TYPE_CHECKING = False
if TYPE_CHECKING:  # (typing is not imported at run time: it costs start-up)
    from typing import Any, Iterator

from ._errors import ProtocolError
from ._expose import ALLOWED_DUNDERS
from ._presentation import HelpHook, class_name, signature_from_text, with_self
from ._protocol import Op
from ._tracebacks import trim

__all__ = ["Proxy", "InterfaceDesc", "build_proxy_class", "check_descriptor", "is_proxy"]

_CALL, _GET, _SET, _ITER = int(Op.CALL), int(Op.GET), int(Op.SET), int(Op.ITER)

#: Proxy classes and their methods name this module (it is not importable), so help()
#: and tracebacks do not point into capbridge's internals.
_PROXY_MODULE = "capbridge.proxy"

#: Items moved per round trip when iterating a proxy.
ITER_BATCH = 256


class InterfaceDesc:
    """A decoded interface descriptor (see ``Interface.describe``)."""

    __slots__ = ("name", "doc", "methods", "properties", "dunders", "callable", "call_signature", "open")

    def __init__(self, desc: tuple) -> None:
        (self.name, self.doc, methods, props, dunders, self.callable, self.call_signature, *rest) = desc
        self.methods = {n: (d, s) for n, d, s in methods}
        self.properties = {n: (d, settable) for n, d, settable in props}
        self.dunders = {n: (d, s) for n, d, s in dunders}
        self.open = bool(rest[0]) if rest else False

    def exposed(self) -> list[str]:
        return sorted([*self.methods, *self.properties])


_MAX_TEXT = 64 * 1024
_IDENTITY_DUNDERS = frozenset({"__eq__", "__ne__", "__hash__"})
_MAX_MEMBERS = 2048


def _text(value: Any, what: str, limit: int = _MAX_TEXT) -> str:
    if type(value) is not str or len(value) > limit:
        raise ProtocolError(f"bad interface descriptor: {what} must be a str of at most {limit} chars")
    return value


def _member_name(value: Any, *, dunder_ok: bool) -> str:
    _text(value, "member name", 128)
    if not value.isidentifier() or keyword.iskeyword(value) or value.startswith("_cb_"):
        raise ProtocolError(f"bad interface descriptor: member name {value!r:.60}")
    if value.startswith("__") and value.endswith("__"):
        if not dunder_ok or value not in ALLOWED_DUNDERS:
            raise ProtocolError(f"bad interface descriptor: special member {value!r:.60} is not allowed")
    elif dunder_ok:
        raise ProtocolError(f"bad interface descriptor: {value!r:.60} listed as a special method")
    if value in _IDENTITY_DUNDERS:
        # The host hashes and compares proxies while decoding (sets, dict keys):
        # that must never turn into a call into the sandbox.
        raise ProtocolError(f"bad interface descriptor: {value} cannot be forwarded to the host")
    return value


def check_descriptor(desc: Any) -> tuple:
    """Validate a descriptor sent by an untrusted peer; returns it unchanged."""
    if type(desc) is not tuple or len(desc) != 8:
        raise ProtocolError("bad interface descriptor: expected a tuple of 8 fields")
    name, doc, methods, props, dunders, is_callable, call_sig, is_open = desc
    _text(name, "name", 200)
    _text(doc, "doc")
    _text(call_sig, "call signature", 4096)
    if type(is_callable) is not bool or type(is_open) is not bool:
        raise ProtocolError("bad interface descriptor: flags must be bools")
    total = 0
    for group, dunder_ok in ((methods, False), (props, False), (dunders, True)):
        if type(group) is not tuple:
            raise ProtocolError("bad interface descriptor: member lists must be tuples")
        total += len(group)
        for item in group:
            if type(item) is not tuple or len(item) != 3:
                raise ProtocolError("bad interface descriptor: member must be (name, doc, detail)")
            _member_name(item[0], dunder_ok=dunder_ok)
            _text(item[1], "member doc")
            if group is props:
                if type(item[2]) is not bool:
                    raise ProtocolError("bad interface descriptor: property flag must be a bool")
            else:
                _text(item[2], "signature", 4096)
    if total > _MAX_MEMBERS:
        raise ProtocolError(f"bad interface descriptor: more than {_MAX_MEMBERS} members")
    return desc


class Proxy:
    """Base class of every proxy. ``isinstance(x, capbridge.Proxy)`` tells a proxy."""

    __slots__ = ("_cb_chan", "_cb_id", "_cb_entry", "__weakref__")
    _cb_desc: InterfaceDesc
    _cb_trusted: bool
    #: ``help(proxy)`` documents the exposed members only, as the peer wrote them.
    __origin__ = HelpHook()

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"{cls.__name__} proxies are made by capbridge, not constructed")

    def __del__(self) -> None:
        try:
            self._cb_chan.session.proxy_dropped(self._cb_entry)
        except Exception:
            pass

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError("a capbridge proxy can only cross its own connection")

    def __dir__(self) -> list[str]:
        return self._cb_desc.exposed() + sorted(self._cb_desc.dunders)

    def __getattr__(self, name: str) -> Any:
        try:
            desc = type(self)._cb_desc
            if desc.open and not name.startswith("_"):
                return self._cb_chan.call(self._cb_id, _GET, name, (), {})
            exposed = ", ".join(desc.exposed()) or "nothing"
            raise AttributeError(f"{desc.name} has no exposed attribute {name!r}; exposed: {exposed}")
        except BaseException as exc:
            trim(exc, _debug(self))
            raise

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_cb_"):
            object.__setattr__(self, name, value)
            return
        desc = type(self)._cb_desc
        if desc.open and not name.startswith("_"):
            self._cb_chan.call(self._cb_id, _SET, name, (value,), {})
            return
        if name in desc.properties:
            if desc.properties[name][1]:
                object.__setattr__(self, name, value)
                return
            raise AttributeError(f"property {name!r} of {desc.name} has no setter")
        raise AttributeError(f"cannot set {name!r} on a proxy of {desc.name}")

    def __repr__(self) -> str:
        return f"<capbridge proxy of {type(self)._cb_desc.name} #{self._cb_id}>"


def _debug(proxy: Proxy) -> bool:
    """Whether the proxy's connection keeps every traceback frame (``debug=True``)."""
    try:
        return bool(object.__getattribute__(proxy, "_cb_chan").session.debug)
    except Exception:
        return False


def is_proxy(obj: Any) -> bool:
    return isinstance(obj, Proxy)


def _new_proxy(cls: type, chan: Any, entry: Any) -> Proxy:
    p = object.__new__(cls)
    object.__setattr__(p, "_cb_chan", chan)
    object.__setattr__(p, "_cb_id", entry.id)
    object.__setattr__(p, "_cb_entry", entry)
    return p


def _method(name: str, doc: str, sig_text: str, trusted: bool) -> Any:
    def method(self: Proxy, *args: Any, **kwargs: Any) -> Any:
        try:
            return self._cb_chan.call(self._cb_id, _CALL, name, args, kwargs)
        except BaseException as exc:
            trim(exc, self._cb_chan.session.debug)
            raise

    method.__name__ = method.__qualname__ = name
    method.__module__ = _PROXY_MODULE
    sig = signature_from_text(sig_text) if trusted else None
    if sig is None:
        method.__annotations__ = {}
        method.__doc__ = f"{name}{sig_text}\n\n{doc}".strip() if sig_text and not trusted else doc
    else:
        method.__doc__ = doc
        method.__signature__ = with_self(sig)  # type: ignore[attr-defined]
    return method


def _property(name: str, doc: str, settable: bool) -> property:
    def fget(self: Proxy) -> Any:
        try:
            return self._cb_chan.call(self._cb_id, _GET, name, (), {})
        except BaseException as exc:
            trim(exc, self._cb_chan.session.debug)
            raise

    fset = None
    if settable:
        def fset(self: Proxy, value: Any) -> None:
            try:
                self._cb_chan.call(self._cb_id, _SET, name, (value,), {})
            except BaseException as exc:
                trim(exc, self._cb_chan.session.debug)
                raise

    return property(fget, fset, None, doc or None)


def _plain_args(exc: Any) -> tuple:
    """An exception's arguments when they are a few plain values (so the other side
    can rebuild ``KeyError('k')`` or ``OSError(2, 'msg')`` as it was), else ()."""
    args = getattr(exc, "args", ())
    if type(args) is tuple and len(args) <= 8 and all(
            type(a) in (str, int, float, bool, type(None)) and (type(a) is not str or len(a) <= 4096)
            for a in args):
        return args
    return ()


def _iterate(chan: Any, first: list, rest: Any) -> Iterator[Any]:
    yield from first
    while rest is not None:
        try:
            batch, more = rest.next_batch(ITER_BATCH)
        except BaseException as exc:
            trim(exc, chan.session.debug)
            raise
        yield from batch
        if not more:
            break


def _dunder(name: str, doc: str) -> Any:
    if name == "__iter__":
        def __iter__(self: Proxy) -> Iterator[Any]:
            try:
                first, rest = self._cb_chan.call(self._cb_id, _ITER, None, (), {})
            except BaseException as exc:
                trim(exc, self._cb_chan.session.debug)
                raise
            return _iterate(self._cb_chan, first, rest)

        fn = __iter__
    elif name == "__exit__":
        def __exit__(self: Proxy, et: Any, ev: Any, tb: Any) -> Any:
            info = None if et is None else (et.__name__, str(ev), _plain_args(ev))
            try:
                return self._cb_chan.call(self._cb_id, _CALL, "__exit__", (info,), {})
            except BaseException as exc:
                trim(exc, self._cb_chan.session.debug)
                raise

        fn = __exit__
    elif name in ("__repr__", "__str__"):
        def fn(self: Proxy) -> Any:
            try:
                return self._cb_chan.call(self._cb_id, _CALL, name, (), {})
            except Exception:
                # A dead peer must not make printing a proxy (logging, debuggers) fail.
                return Proxy.__repr__(self)

    elif name == "__call__":
        def __call__(self: Proxy, *args: Any, **kwargs: Any) -> Any:
            try:
                return self._cb_chan.call(self._cb_id, _CALL, None, args, kwargs)
            except BaseException as exc:
                trim(exc, self._cb_chan.session.debug)
                raise

        fn = __call__
    else:
        def fn(self: Proxy, *args: Any) -> Any:
            try:
                return self._cb_chan.call(self._cb_id, _CALL, name, args, {})
            except BaseException as exc:
                trim(exc, self._cb_chan.session.debug)
                raise

    fn.__name__ = fn.__qualname__ = name
    fn.__module__ = _PROXY_MODULE
    fn.__doc__ = doc or None
    return fn


def build_proxy_class(desc: InterfaceDesc, *, trusted: bool) -> type:
    """Make the proxy class for one interface.

    ``trusted`` is True in the sandbox (descriptors come from the host) and allows
    rebuilding real signatures; on the host, descriptors from the sandbox only ever
    become names, docstrings and forwarding stubs.
    """
    ns: dict[str, Any] = {"__slots__": (), "_cb_desc": desc, "_cb_trusted": trusted,
                          "__doc__": desc.doc or None, "__module__": _PROXY_MODULE}
    for name, (doc, sig) in desc.methods.items():
        ns[name] = _method(name, doc, sig, trusted)
    for name, (doc, settable) in desc.properties.items():
        ns[name] = _property(name, doc, settable)
    for name, (doc, _sig) in desc.dunders.items():
        ns[name] = _dunder(name, doc)
    if desc.callable and "__call__" not in ns:
        ns["__call__"] = _dunder("__call__", "")
    if "__eq__" in ns and "__hash__" not in ns:
        ns["__hash__"] = None
    cls = type(class_name(desc.name), (Proxy,), ns)
    if trusted and desc.callable and desc.call_signature:
        sig = signature_from_text(desc.call_signature)
        if sig is not None:
            cls.__signature__ = sig  # type: ignore[attr-defined]
    return cls


new_proxy = _new_proxy


_METHOD_CODE = _method("m", "", "", False).__code__
assert _METHOD_CODE.co_freevars == ("name",)
_CALL_CODE = _dunder("__call__", "").__code__


def call_parts(fn: Any) -> tuple | None:
    """``(proxy, name)`` when calling ``fn`` is one plain call through a proxy (a proxy
    method, or a callable proxy: name None), else None."""
    if isinstance(fn, Proxy):
        call = getattr(type(fn), "__call__", None)
        return (fn, None) if getattr(call, "__code__", None) is _CALL_CODE else None
    owner = getattr(fn, "__self__", None)
    func = getattr(fn, "__func__", None)
    if isinstance(owner, Proxy) and getattr(func, "__code__", None) is _METHOD_CODE:
        return owner, func.__closure__[0].cell_contents  # the name it was made for
    return None
