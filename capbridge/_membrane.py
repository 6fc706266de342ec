"""Membranes: what ``facet()`` and ``revocable()`` make, and how they hold.

A capability made by :func:`facet` or :func:`revocable` is the root of a
:class:`Membrane`. Everything the sandbox reaches through the root - return values,
property values, iterator items, capabilities inside returned containers and value
types, and everything reached through those in turn - crosses wrapped in the same
membrane, and so do the sandbox's own objects (callbacks) handed *in* through it and
what they hand back. Wherever a wrapped reference travels afterwards (back to the
host and out again, into a host container, as an argument to an unrelated host
method, to a second path, to another sandbox), it is the same wrapper, so it stays
inside the membrane.

* A wrapper is made once per (membrane, target): one object reached through two
  membranes has two wrappers, and each membrane's revocation applies to its own.
* A result that *is* a facet's target comes back as the facet (or, once the facet
  object itself is gone, as a new one with the same names), so returning ``self``
  never widens a facet. Each membrane keeps its *layers*: the (target, interface)
  of its own root and of every facet or revocable it was built on.
* Revokers only accumulate: a facet of a revocable, a revocable of a facet, and a
  reference carried from one membrane out through another are revoked by every
  revoker beneath them.
* ``revoke()`` marks the membrane revoked at once (any call that starts afterwards,
  on any thread, raises :class:`~capbridge.RevokedError`) and drops every target the
  membrane's wrappers held, so what only the membrane kept alive is released.

Host code that is handed a wrapper (because the sandbox passed one to a host method)
can use its exposed methods and properties and call it; results come back wrapped in
the same membrane. No thread-local state is involved: a wrapper carries its membrane.
"""

from __future__ import annotations

import threading
import weakref
TYPE_CHECKING = False
if TYPE_CHECKING:  # (typing is not imported at run time: it costs start-up)
    from typing import Any, Callable, Iterator

from ._errors import CapabilityError, RevokedError
from ._expose import ALLOWED_DUNDERS, Interface, Member, Prop, _doc, _signature, interface_of, value_type_of

__all__ = ["Revoker", "Membrane", "Bound", "Facet", "Revocable", "Membraned", "InboundProxy",
           "facet", "revocable", "MAX_WRAP_DEPTH"]

#: How deep a value may nest for a membrane to wrap what is inside it.
MAX_WRAP_DEPTH = 100


class Revoker:
    """A switch: once thrown, every membrane that lists it is revoked."""

    __slots__ = ("revoked", "_membranes", "_lock", "__weakref__")

    def __init__(self) -> None:
        self.revoked = False
        self._membranes: "weakref.WeakSet[Membrane]" = weakref.WeakSet()
        self._lock = threading.Lock()

    def join(self, membrane: "Membrane") -> bool:
        """List ``membrane``; True if this revoker was already thrown."""
        with self._lock:
            self._membranes.add(membrane)
            return self.revoked

    def revoke(self) -> None:
        with self._lock:
            self.revoked = True
            members = list(self._membranes)
        for m in members:
            m._revoke()


class _Layer:
    """One facet or revocable a membrane is built on: its target, the interface its
    root offers, and the root object while it lives."""

    __slots__ = ("target", "iface", "cls", "root")

    def __init__(self, target: Any, iface: Interface, cls: type) -> None:
        self.target = target
        self.iface = iface
        self.cls = cls
        self.root: Callable[[], Any] = _dead_ref


def _dead_ref() -> None:
    return None


class Membrane:
    """Everything reached through one facet or revocable capability.

    ``revokers``: every revoker that applies (its own and the ones beneath it).
    ``layers``: the facets and revocables it is made of, its own first (a composed
    membrane - one thing reached through two - has only borrowed ones).
    """

    __slots__ = ("revokers", "revoked", "layers", "_own", "_out", "_in", "_composed", "_lock",
                 "__weakref__")

    def __init__(self, revokers: frozenset[Revoker], layers: tuple[_Layer, ...], own: bool) -> None:
        self.revokers = revokers
        self.revoked = False
        self.layers = layers
        self._own = own  # layers[0] is this membrane's own root
        self._out: "weakref.WeakValueDictionary[Any, Membraned]" = weakref.WeakValueDictionary()
        self._in: "weakref.WeakValueDictionary[int, InboundProxy]" = weakref.WeakValueDictionary()
        self._composed: "weakref.WeakValueDictionary[int, Membrane]" = weakref.WeakValueDictionary()
        self._lock = threading.Lock()
        # Join first, then look: a revoke() running meanwhile either sees this
        # membrane or has already marked its revoker.
        if any([r.join(self) for r in revokers]):
            self._revoke()

    def _revoke(self) -> None:
        with self._lock:
            self.revoked = True
            held: list[Any] = [*self._out.values(), *self._in.values()]
            self._out.clear()
            self._in.clear()
            if self._own:
                layer = self.layers[0]
                layer.target = None
                held.append(layer.root())
        for w in held:
            if w is not None:
                w._cb_raw = None

    # -- outward: host objects reached through the membrane -------------------------

    def wrap_out(self, obj: Any) -> Any:
        """The reference to capability ``obj`` that leaves through this membrane."""
        if isinstance(obj, Bound):
            if obj._cb_membrane is self:
                return obj
            return self.compose(obj._cb_membrane)._wrapper(obj._cb_raw, obj._cb_iface)
        if type(obj) is InboundProxy:
            return obj  # the sandbox's own object, already behind a membrane
        for i, layer in enumerate(self.layers):
            if layer.target is obj:
                return self._root() if i == 0 and self._own else self._wrapper(obj, layer.iface)
        iface = interface_of(obj)
        if iface is None:
            raise CapabilityError(
                f"{type(obj).__name__} cannot cross into the sandbox: it exposes nothing"
            )
        return self._wrapper(obj, iface)

    def _root(self) -> "Bound":
        """This membrane's root capability (made anew if the old one is gone)."""
        layer = self.layers[0]
        with self._lock:
            root = layer.root()
            if root is None:
                root = layer.cls(layer.target, layer.iface, self)
                if layer.target is not None and not self.revoked:
                    layer.root = weakref.ref(root)
        return root

    def _wrapper(self, raw: Any, iface: Interface) -> "Membraned":
        if self.revoked or raw is None:
            return Membraned(None, iface, self)
        default = interface_of(raw) is iface
        key: Any = id(raw) if default else (id(raw), id(iface))
        with self._lock:
            if self.revoked:  # revoked meanwhile: hold nothing
                return Membraned(None, iface, self)
            w = self._out.get(key)
            if w is None or w._cb_raw is not raw:
                w = self._out[key] = Membraned(raw, iface, self)
        return w

    def compose(self, inner: "Membrane") -> "Membrane":
        """The membrane of something in ``inner`` reached through this one as well."""
        if inner is self:
            return self
        layers = self.layers + inner.layers
        revokers = self.revokers | inner.revokers
        with self._lock:
            m = self._composed.get(id(inner))
            if m is not None and m.layers == layers and m.revokers == revokers:
                return m
        m = Membrane(revokers, layers, own=False)
        with self._lock:
            self._composed[id(inner)] = m
        return m

    def wrap_value(self, value: Any) -> Any:
        """``value`` leaving through the membrane: every capability and sandbox object
        in it (also inside containers and value types) wrapped."""
        return _walk(value, self._out_leaf, 0)

    def wrap_result(self, value: Any) -> Any:
        """``value`` a sandbox object handed back in: its sandbox objects wrapped."""
        return _walk(value, self._in_leaf, 0)

    def _out_leaf(self, value: Any) -> Any:
        t = type(value)
        if t is InboundProxy or isinstance(value, Bound):
            return self.wrap_out(value)
        if _is_proxy(value):
            return self.wrap_in(value)
        return self.wrap_out(value) if interface_of(value) is not None else value

    def _in_leaf(self, value: Any) -> Any:
        return self.wrap_in(value) if type(value) is not InboundProxy and _is_proxy(value) else value

    # -- inward: the sandbox's objects handed in through the membrane ------------------

    def wrap_in(self, proxy: Any) -> Any:
        """A sandbox proxy passed in through this membrane: stops working on revoke."""
        if not self.revokers:
            return proxy  # nothing can revoke it
        if self.revoked:
            return InboundProxy(None, self)
        with self._lock:
            if self.revoked:
                return InboundProxy(None, self)
            w = self._in.get(id(proxy))
            if w is None or w._cb_raw is not proxy:
                w = self._in[id(proxy)] = InboundProxy(proxy, self)
        return w

    def stats(self) -> dict[str, int]:
        return {"wrappers": len(self._out), "inbound": len(self._in), "composed": len(self._composed)}


_PLAIN_SCALARS = frozenset({type(None), bool, int, float, complex, str, bytes, bytearray})


def _walk(value: Any, leaf: Callable[[Any], Any], depth: int) -> Any:
    t = type(value)
    if t in _PLAIN_SCALARS:
        return value
    if depth >= MAX_WRAP_DEPTH:
        raise CapabilityError(f"a value nested deeper than {MAX_WRAP_DEPTH} levels cannot cross a membrane")
    if t is list or t is tuple or t is set or t is frozenset:
        return t(_walk(x, leaf, depth + 1) for x in value)
    if t is dict:
        return {_walk(k, leaf, depth + 1): _walk(v, leaf, depth + 1) for k, v in value.items()}
    vt = value_type_of(t)
    if vt is not None:
        fields = [getattr(value, f) for f in vt.fields]
        wrapped = [_walk(f, leaf, depth + 1) for f in fields]
        if all(a is b for a, b in zip(fields, wrapped)):
            return value
        return vt.cls(*wrapped)
    return leaf(value)


def _is_proxy(obj: Any) -> bool:
    return isinstance(obj, _proxy_class())


def _proxy_class() -> type:
    from ._proxy import Proxy

    return Proxy


def _revoked_error(iface: Interface | None) -> RevokedError:
    return RevokedError(f"{iface.name if iface is not None else 'capability'} was revoked")


# --------------------------------------------------------------------------- wrappers


class Bound:
    """A reference to a host object inside a membrane (base of the wrappers).

    Host code may use one as it would the sandbox: exposed methods and properties,
    and calling it when it is callable. Each use checks revocation first; results
    come back wrapped in the same membrane.
    """

    __slots__ = ("_cb_raw", "_cb_iface", "_cb_membrane", "__weakref__")

    def __init__(self, raw: Any, iface: Interface, membrane: Membrane) -> None:
        self._cb_raw = raw
        self._cb_iface = iface
        self._cb_membrane = membrane

    def _cb_wrapper_interface(self) -> Interface:
        return self._cb_iface

    def _cb_live(self) -> Any:
        raw = self._cb_raw
        if raw is None or self._cb_membrane.revoked:
            raise _revoked_error(self._cb_iface)
        return raw

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_cb_"):
            raise AttributeError(name)
        iface = self._cb_iface
        if name in iface.methods:
            return _through(self, name)
        if name in iface.properties:
            return self._cb_membrane.wrap_value(getattr(self._cb_live(), name))
        exposed = ", ".join(iface.exposed_names()) or "nothing"
        raise AttributeError(f"{iface.name} has no exposed attribute {name!r}; exposed: {exposed}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self._cb_iface.callable:
            raise TypeError(f"{self._cb_iface.name} object is not callable")
        return self._cb_membrane.wrap_value(self._cb_live()(*args, **kwargs))

    def __repr__(self) -> str:
        state = "revoked" if self._cb_raw is None or self._cb_membrane.revoked else "live"
        return f"<{type(self).__name__.lower()} {self._cb_iface.name} ({state})>"


def _through(w: Bound, name: str) -> Callable[..., Any]:
    def method(*args: Any, **kwargs: Any) -> Any:
        return w._cb_membrane.wrap_value(getattr(w._cb_live(), name)(*args, **kwargs))

    method.__name__ = name
    return method


class Facet(Bound):
    """A capability exposing only some names of another object. Made by :func:`facet`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"<facet of {self._cb_iface.name}: {', '.join(self._cb_iface.exposed_names())}>"


class Revocable(Bound):
    """A capability that works until it is revoked. Made by :func:`revocable`."""

    __slots__ = ()


class Membraned(Bound):
    """Something reached through a facet or revocable, wrapped in its membrane."""

    __slots__ = ()


class InboundProxy:
    """A sandbox object handed in through a revocable membrane (a callback, a plugin
    object): it forwards to the sandbox until the membrane is revoked. What it is
    given leaves through the membrane; what it returns comes back inside it."""

    __slots__ = ("_cb_raw", "_cb_membrane", "_cb_class", "__weakref__")

    def __init__(self, proxy: Any, membrane: Membrane) -> None:
        self._cb_raw = proxy
        self._cb_membrane = membrane
        self._cb_class = type(proxy) if proxy is not None else _proxy_class()

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # noqa: F811 - so isinstance(x, capbridge.Proxy) holds
        return self._cb_class

    def _cb_live(self) -> Any:
        raw = self._cb_raw
        if raw is None or self._cb_membrane.revoked:
            raise RevokedError("this sandbox object was handed in through a revoked capability")
        return raw

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_cb_"):
            raise AttributeError(name)
        m = self._cb_membrane
        target = getattr(self._cb_live(), name)
        if not callable(target):
            return m.wrap_result(target)

        def method(*args: Any, **kwargs: Any) -> Any:
            fn = getattr(self._cb_live(), name)
            return m.wrap_result(fn(*m.wrap_value(args), **m.wrap_value(kwargs)))

        return method

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        m = self._cb_membrane
        return m.wrap_result(self._cb_live()(*m.wrap_value(args), **m.wrap_value(kwargs)))

    def __iter__(self) -> Iterator[Any]:
        m = self._cb_membrane
        for item in iter(self._cb_live()):
            yield m.wrap_result(item)
            self._cb_live()

    def __repr__(self) -> str:
        state = "revoked" if self._cb_raw is None or self._cb_membrane.revoked else "live"
        return f"<sandbox object behind a membrane ({state})>"


# --------------------------------------------------------------------------- constructors


def _new_root(cls: type, raw: Any, iface: Interface, revokers: frozenset[Revoker],
              beneath: tuple[_Layer, ...] = ()) -> Any:
    layer = _Layer(raw, iface, cls)
    membrane = Membrane(revokers, (layer, *beneath), own=True)
    return membrane._root()


def facet(obj: Any, *names: str) -> Facet:
    """A capability exposing only ``names`` of ``obj`` (attenuation).

    ``obj`` can be any object, exposed or not. Each name becomes a method when the
    attribute is callable, a property when it is a property (settable if it has a
    setter) and a read-only attribute otherwise; supported special methods
    (``__len__``, ``__enter__``, ...) make the proxy support that protocol.
    Everything reached through the facet stays inside its membrane, and a result
    that is ``obj`` itself comes back as the facet.
    """
    if not names:
        raise ValueError("facet() needs at least one name to expose")
    if isinstance(obj, Bound):
        m = obj._cb_membrane
        return _new_root(Facet, obj._cb_raw, _narrow(obj._cb_iface, names), m.revokers, m.layers)
    return _new_root(Facet, obj, _facet_interface(obj, names), frozenset())


def revocable(obj: Any) -> tuple[Revocable, Callable[[], None]]:
    """Return ``(cap, revoke)``.

    ``cap`` forwards to ``obj``. After ``revoke()`` every use of ``cap``, and of every
    capability reached through it (however that reference travelled since), raises
    :class:`~capbridge.RevokedError`, and sandbox objects handed in through it stop
    working; what only the capability kept alive is released.
    """
    revoker = Revoker()
    if isinstance(obj, Bound):
        m = obj._cb_membrane
        cap = _new_root(Revocable, obj._cb_raw, obj._cb_iface, m.revokers | {revoker}, m.layers)
    else:
        iface = interface_of(obj)
        if iface is None:
            raise CapabilityError(
                f"revocable(): {type(obj).__name__} exposes nothing; mark members with @expose "
                "or wrap it with facet(obj, 'name', ...) first"
            )
        cap = _new_root(Revocable, obj, iface, frozenset({revoker}))
    return cap, revoker.revoke


def _narrow(inner: Interface, names: tuple[str, ...]) -> Interface:
    offered = {**inner.methods, **inner.properties, **inner.dunders}
    missing = [n for n in names if n not in offered]
    if missing:
        raise CapabilityError(
            f"facet() cannot widen a capability: {', '.join(missing)} not offered by it "
            f"(it offers: {', '.join(sorted(offered)) or 'nothing'})"
        )
    return Interface(
        name=inner.name,
        doc=inner.doc,
        methods={n: m for n, m in inner.methods.items() if n in names},
        properties={n: p for n, p in inner.properties.items() if n in names},
        dunders={n: d for n, d in inner.dunders.items() if n in names},
        callable="__call__" in names and inner.callable,
        call_signature=inner.call_signature if "__call__" in names else "",
    )


def _facet_interface(obj: Any, names: tuple[str, ...]) -> Interface:
    import inspect

    methods: dict[str, Member] = {}
    props: dict[str, Prop] = {}
    dunders: dict[str, Member] = {}
    cls = type(obj)
    for name in names:
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"facet(): {name!r} is not an attribute name")
        if name.startswith("__") and name.endswith("__"):
            if name not in ALLOWED_DUNDERS:
                raise ValueError(f"facet(): {name} cannot be exposed")
            fn = getattr(cls, name, None)
            if fn is None:
                raise AttributeError(f"{cls.__name__} has no attribute {name!r}")
            dunders[name] = Member(_doc(fn), _signature(fn, drop_first=True))
            continue
        class_attr = inspect.getattr_static(obj, name, None)
        if isinstance(class_attr, property):
            props[name] = Prop(_doc(class_attr), class_attr.fset is not None)
            continue
        if not hasattr(obj, name):
            raise AttributeError(f"{cls.__name__} has no attribute {name!r}")
        value = getattr(obj, name)
        if callable(value):
            methods[name] = Member(_doc(value), _signature(value))
        else:
            props[name] = Prop("", False)
    return Interface(
        name=cls.__name__,
        doc=_doc(cls) if cls.__doc__ is not None else "",
        methods=methods,
        properties=props,
        dunders=dunders,
        callable="__call__" in dunders,
        call_signature=dunders["__call__"].signature if "__call__" in dunders else "",
    )


for _obj in (facet, revocable, Facet, Revocable):
    _obj.__module__ = "capbridge"
del _obj
