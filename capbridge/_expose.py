"""What a host object lets the sandbox reach: ``expose``, ``capability`` and
``value_type``, and the :class:`Interface` computed from them (``facet`` and
``revocable`` live in :mod:`capbridge._membrane`).

Access control is an explicit allow-list per class. Nothing is reachable because of
how it is named; a member is reachable because the host marked it.
"""

from __future__ import annotations

import collections
import functools
import threading
import types
import weakref

TYPE_CHECKING = False
if TYPE_CHECKING:  # (typing and dataclasses are not imported at run time: they cost start-up)
    from typing import Any, Iterable, TypeVar

    T = TypeVar("T")

__all__ = [
    "expose",
    "capability",
    "value_type",
    "Interface",
    "interface_of",
    "is_capability",
]

_EXPOSED = "__capbridge_exposed__"

#: Special methods a proxy may support when the host exposes them. Anything else
#: spelled with double underscores can never be exposed.
ALLOWED_DUNDERS = frozenset(
    """
    __len__ __getitem__ __setitem__ __delitem__ __contains__ __iter__ __reversed__
    __next__ __call__ __enter__ __exit__ __bool__ __int__ __float__ __index__
    __str__ __repr__ __format__ __hash__
    __eq__ __ne__ __lt__ __le__ __gt__ __ge__
    __add__ __sub__ __mul__ __matmul__ __truediv__ __floordiv__ __mod__ __divmod__
    __pow__ __lshift__ __rshift__ __and__ __xor__ __or__
    __radd__ __rsub__ __rmul__ __rmatmul__ __rtruediv__ __rfloordiv__ __rmod__
    __rdivmod__ __rpow__ __rlshift__ __rrshift__ __rand__ __rxor__ __ror__
    __neg__ __pos__ __abs__ __invert__
    """.split()
)


class ExposedProperty(property):
    # A property marked reachable from the sandbox (made by ``@expose``). Its
    # ``__doc__`` is the wrapped property's: the slot of ``property`` itself, which a
    # class docstring here would hide (so help() showed this class's text).
    __doc__ = property.__dict__["__doc__"]  # type: ignore[assignment]


def expose(member: T) -> T:
    """Mark a method, property, static or class method as reachable from the sandbox.

    Put it above ``@property`` for properties; a setter added with
    ``@name.setter`` keeps the mark. On one of the supported special methods
    (``__len__``, ``__getitem__``, ``__iter__``, ``__call__``, ``__enter__``,
    arithmetic and comparisons, ...) it makes the proxy support that protocol.
    """
    if isinstance(member, property):
        return ExposedProperty(member.fget, member.fset, member.fdel, member.__doc__)  # type: ignore[return-value]
    target = member.__func__ if isinstance(member, (staticmethod, classmethod)) else member
    name = getattr(target, "__name__", "")
    if not callable(target):
        raise TypeError(f"@expose applies to methods and properties, not {type(member).__name__}")
    if name.startswith("__") and name.endswith("__") and name not in ALLOWED_DUNDERS:
        raise TypeError(
            f"@expose cannot expose {name}: only these special methods can be: "
            + ", ".join(sorted(ALLOWED_DUNDERS))
        )
    setattr(target, _EXPOSED, True)
    return member


def capability(cls: type[T]) -> type[T]:
    """Class decorator: expose every public method and property of ``cls``."""
    if not isinstance(cls, type):
        raise TypeError("@capability decorates a class")
    cls.__capbridge_all_public__ = True  # type: ignore[attr-defined]
    _INTERFACES.pop(cls, None)
    return cls


# --------------------------------------------------------------------------- interfaces


#: A method or special method: its docstring and signature text.
Member = collections.namedtuple("Member", ["doc", "signature"])
#: A property: its docstring and whether it can be set.
Prop = collections.namedtuple("Prop", ["doc", "settable"])


class Interface:
    """What one kind of capability offers, as the proxy on the other side sees it.

    Compared and hashed by identity (a session keys its interfaces by object).
    """

    __slots__ = ("name", "doc", "methods", "properties", "dunders", "callable", "call_signature",
                 "__weakref__")

    def __init__(self, name: str, doc: str, methods: dict[str, Member], properties: dict[str, Prop],
                 dunders: dict[str, Member], callable: bool = False, call_signature: str = "") -> None:
        self.name = name
        self.doc = doc
        self.methods = methods
        self.properties = properties
        self.dunders = dunders
        self.callable = callable
        self.call_signature = call_signature

    def __repr__(self) -> str:
        return f"<Interface {self.name}: {', '.join(self.exposed_names()) or 'nothing exposed'}>"

    def exposed_names(self) -> list[str]:
        return sorted([*self.methods, *self.properties])

    def describe(self) -> tuple:
        """The wire form: plain tuples of strings and booleans."""
        return (
            self.name,
            self.doc,
            tuple((n, m.doc, m.signature) for n, m in self.methods.items()),
            tuple((n, p.doc, p.settable) for n, p in self.properties.items()),
            tuple((n, m.doc, m.signature) for n, m in self.dunders.items()),
            self.callable,
            self.call_signature,
        )


_INTERFACES: "weakref.WeakKeyDictionary[type, Interface | None]" = weakref.WeakKeyDictionary()
_INTERFACES_LOCK = threading.Lock()


def _doc(obj: Any) -> str:
    import inspect

    return inspect.getdoc(obj) or ""


def _signature(fn: Any, *, drop_first: bool = False) -> str:
    try:
        import inspect

        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return "(*args, **kwargs)"
    if drop_first:
        params = list(sig.parameters.values())[1:]
        sig = sig.replace(parameters=params)
    return str(sig)


def _is_marked(value: Any) -> bool:
    if isinstance(value, ExposedProperty):
        return True
    if isinstance(value, (staticmethod, classmethod)):
        value = value.__func__
    return bool(getattr(value, _EXPOSED, False))


def _class_interface(cls: type) -> Interface | None:
    all_public = bool(getattr(cls, "__capbridge_all_public__", False))
    methods: dict[str, Member] = {}
    props: dict[str, Prop] = {}
    dunders: dict[str, Member] = {}
    seen: set[str] = set()
    for klass in cls.__mro__:
        if klass is object:
            continue
        for name, value in vars(klass).items():
            if name in seen:
                continue
            seen.add(name)
            is_dunder = name.startswith("__") and name.endswith("__")
            marked = _is_marked(value)
            public = all_public and not name.startswith("_")
            if not (marked or public):
                continue
            if is_dunder:
                if name in ALLOWED_DUNDERS and callable(value):
                    dunders[name] = Member(_doc(value), _signature(value, drop_first=True))
                continue
            if isinstance(value, property):
                props[name] = Prop(_doc(value), value.fset is not None)
            elif isinstance(value, staticmethod):
                methods[name] = Member(_doc(value.__func__), _signature(value.__func__))
            elif isinstance(value, classmethod):
                methods[name] = Member(_doc(value.__func__), _signature(value.__func__, drop_first=True))
            elif callable(value):
                methods[name] = Member(_doc(value), _signature(value, drop_first=True))
    if not (methods or props or dunders):
        return None
    call_sig = dunders["__call__"].signature if "__call__" in dunders else ""
    return Interface(
        name=cls.__name__,
        doc=_doc(cls) if cls.__doc__ is not None else "",
        methods=methods,
        properties=props,
        dunders=dunders,
        callable="__call__" in dunders,
        call_signature=call_sig,
    )


def class_interface(cls: type) -> Interface | None:
    """The interface of instances of ``cls``, or ``None`` if it exposes nothing."""
    try:
        return _INTERFACES[cls]
    except KeyError:
        pass
    except TypeError:  # not weak-referenceable
        return _class_interface(cls)
    iface = _class_interface(cls)
    with _INTERFACES_LOCK:
        _INTERFACES[cls] = iface
    return iface


_FUNCTION_TYPES = (
    types.FunctionType,
    types.MethodType,
    types.BuiltinFunctionType,
    types.BuiltinMethodType,
    types.MethodDescriptorType,
    types.ClassMethodDescriptorType,
    functools.partial,
)


def _callable_interface(fn: Any) -> Interface:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__
    sig = _signature(fn)
    return Interface(
        name=str(name),
        doc=_doc(fn),
        methods={},
        properties={},
        dunders={"__call__": Member(_doc(fn), sig)},
        callable=True,
        call_signature=sig,
    )


_FN_IFACES: "weakref.WeakKeyDictionary[Any, Interface]" = weakref.WeakKeyDictionary()


def interface_of(obj: Any) -> Interface | None:
    """The interface ``obj`` offers as a capability, or ``None`` if it is not one."""
    wrapper = getattr(type(obj), "_cb_wrapper_interface", None)
    if wrapper is not None:
        return wrapper(obj)
    if isinstance(obj, _FUNCTION_TYPES):
        try:
            return _FN_IFACES[obj]
        except (KeyError, TypeError):
            pass
        iface = _callable_interface(obj)
        try:
            _FN_IFACES[obj] = iface
        except TypeError:
            pass
        return iface
    return class_interface(type(obj))


def is_capability(obj: Any) -> bool:
    """True if ``obj`` crosses the boundary by reference."""
    return interface_of(obj) is not None


# --------------------------------------------------------------------------- value types


#: A registered value type: the name both sides know it by, the class, its fields.
ValueType = collections.namedtuple("ValueType", ["name", "cls", "fields", "is_tuple"], defaults=[False])


_VALUE_TYPES: dict[str, ValueType] = {}
_VALUE_BY_CLASS: dict[type, ValueType] = {}
_VALUE_LOCK = threading.Lock()


def _fields_of(cls: type) -> tuple[str, ...]:
    import dataclasses

    if dataclasses.is_dataclass(cls):
        return tuple(f.name for f in dataclasses.fields(cls) if f.init)
    if issubclass(cls, tuple) and hasattr(cls, "_fields"):
        return tuple(cls._fields)  # type: ignore[attr-defined]
    raise TypeError(f"value_type() takes a dataclass or a NamedTuple, not {cls.__name__}")


def value_type(cls: type[T] | None = None, *, name: str | None = None) -> Any:
    """Register a dataclass or NamedTuple to cross by value, as its fields, both ways.

    Usable as ``@value_type``, ``@value_type(name="Point")`` or ``value_type(Point)``.
    Both sides match a value type by ``name`` (default: the class's qualified name);
    a side that has no class of that name builds a look-alike with the same fields.
    """

    def register(klass: type[T]) -> type[T]:
        if not isinstance(klass, type):
            raise TypeError("value_type() takes a class")
        vname = name or klass.__qualname__
        vt = ValueType(vname, klass, _fields_of(klass), issubclass(klass, tuple))
        with _VALUE_LOCK:
            old = _VALUE_TYPES.get(vname)
            if old is not None and old.cls is not klass and (
                old.cls.__module__,
                old.cls.__qualname__,
            ) != (klass.__module__, klass.__qualname__):
                raise ValueError(
                    f"value type name {vname!r} is already taken by {old.cls.__module__}."
                    f"{old.cls.__qualname__}; pass value_type(cls, name='...')"
                )
            if old is not None:
                _VALUE_BY_CLASS.pop(old.cls, None)
            _VALUE_TYPES[vname] = vt
            _VALUE_BY_CLASS[klass] = vt
        return klass

    if cls is None:
        return register
    return register(cls)


def value_type_of(cls: type) -> ValueType | None:
    return _VALUE_BY_CLASS.get(cls)


def value_type_named(name: str) -> ValueType | None:
    return _VALUE_TYPES.get(name)


def registered_value_types() -> Iterable[ValueType]:
    return list(_VALUE_TYPES.values())


for _obj in (expose, capability, value_type, Interface):
    _obj.__module__ = "capbridge"
del _obj
