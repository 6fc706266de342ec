"""Shipping a host function by value for ``Sandbox.call`` (cloudpickle).

The function travels with its closure, defaults and the globals it uses, and every
object on the way passes one gate, an explicit allow-list of what may ride along:

* values (the types that cross by value everywhere, and registered value types);
* capabilities and proxies, by reference (as in any call);
* functions, classes and their parts (code, cells, descriptors, annotations),
  by value when the shipper defined them and by name when the sandbox can import
  them; enum members; modules by name (imported inside the sandbox).

Anything else stops the call with :class:`CapabilityError` naming where the function
reaches it (a global, a closure variable, a default, an attribute of a shipped
class, an item of a container) and its type, so a host object - a config object, a
connection, a client with a password in its ``__dict__`` - can't ride along, whatever
its class, bases or metaclass. Nothing is sent unless the whole call passes.
"""

from __future__ import annotations

import enum
import functools
import io
import sys
import types
from typing import Any, Callable, Iterator

import cloudpickle
from cloudpickle import cloudpickle as _cp

from . import _codec
from ._errors import CapabilityError
from ._expose import interface_of, value_type_of
from ._membrane import Bound, InboundProxy
from ._proxy import Proxy

__all__ = ["ship"]

#: Parts of functions and classes that pickle by reference or as plain data.
_CODE_PARTS = (
    types.FunctionType, types.ModuleType, types.CodeType, types.CellType, types.BuiltinFunctionType,
    types.MethodDescriptorType, types.WrapperDescriptorType, types.ClassMethodDescriptorType,
    types.GetSetDescriptorType, types.MemberDescriptorType, types.MappingProxyType,
    types.GenericAlias, types.NotImplementedType, types.EllipsisType, property, classmethod,
    staticmethod, slice, range, functools.partial,
)

#: Modules whose own classes make the parts of function and class definitions
#: (annotations, dataclass fields, enum and abc bookkeeping). Only the object's own
#: class counts, never its bases or metaclass.
_MACHINERY = frozenset({"typing", "dataclasses", "enum", "functools", "abc", "types",
                        "collections.abc", "_collections_abc"})


def _importable_inside(module: str | None, allowed: frozenset[str]) -> bool:
    if not module:
        return False
    top = module.partition(".")[0]
    return top in sys.stdlib_module_names or top in allowed or top in ("capbridge", "cloudpickle", "tblib")


class _Refused(CapabilityError):
    """The gate refused ``obj`` (turned into a message naming where it was)."""

    def __init__(self, obj: Any) -> None:
        super().__init__(_codec.describe_type(obj))
        self.obj = obj


def _gate(obj: Any, capability: Callable[[Any], Any]) -> Any:
    """The persistent id of ``obj`` while shipping (None: pickle it as is)."""
    t = type(obj)
    if t in _codec.PLAIN_TYPES:
        return None
    if t in _codec.STDLIB_VALUE_TYPES or _codec.is_ndarray(obj):
        return _codec.encode_value_record(obj)
    if isinstance(obj, (Proxy, Bound, InboundProxy)) or value_type_of(t) is not None:
        return capability(obj)
    if isinstance(obj, type):
        vt = value_type_of(obj)
        if vt is not None:
            # The sandbox uses its own class of that value type, so instances it
            # makes cross back as fields.
            return ("v", "vtclass", (vt.name, vt.fields, vt.is_tuple))
        return None
    if isinstance(obj, _CODE_PARTS) or isinstance(obj, enum.Enum) or t.__module__ in _MACHINERY:
        return None
    if isinstance(obj, types.MethodType):
        if isinstance(obj.__self__, (type, types.ModuleType)):
            return None
        return capability(obj)  # bound to an instance: a callable capability
    if interface_of(obj) is not None:
        return capability(obj)
    raise _Refused(obj)


class _ShipPickler(cloudpickle.Pickler):
    def __init__(self, file: Any, allowed: frozenset[str], capability: Callable[[Any], Any]) -> None:
        super().__init__(file, protocol=5)
        self._allowed = allowed
        self._capability = capability

    def persistent_id(self, obj: Any) -> Any:
        return _gate(obj, self._capability)

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, types.FunctionType):
            if not _importable_inside(getattr(obj, "__module__", None), self._allowed):
                return self._dynamic_function_reduce(obj)
        elif isinstance(obj, type):
            if not _importable_inside(getattr(obj, "__module__", None), self._allowed):
                return _cp._dynamic_class_reduce(obj)
        return super().reducer_override(obj)


def ship(shipped: Any, session: Any, made: list, pending: list) -> bytes:
    """Pickle ``(fn, args, kwargs)`` of a ShippedCall for the sandbox.

    Capabilities in it are exported by ``session`` into ``made`` and ``pending``
    (the body being encoded), so they are taken back if the body is not sent.
    """
    buf = io.BytesIO()

    def capability(obj: Any) -> Any:
        return session.pid_out(obj, None, made, pending)

    try:
        _ShipPickler(buf, session.allow_modules, capability).dump((shipped.fn, shipped.args, shipped.kwargs))
    except _Refused as exc:
        raise CapabilityError(_refusal(shipped, exc.obj)) from None
    except RecursionError:
        raise CapabilityError(_TOO_DEEP) from None
    except Exception as exc:
        if isinstance(exc.__cause__, RecursionError):  # cloudpickle's wording of it
            raise CapabilityError(_TOO_DEEP) from None
        raise
    return buf.getvalue()


_TOO_DEEP = "a value nested too deeply to send into the sandbox"


def _refusal(shipped: Any, bad: Any) -> str:
    fn = shipped.fn
    name = getattr(fn, "__qualname__", None) or type(fn).__name__
    roots = [(f"argument {i + 1}", a) for i, a in enumerate(shipped.args)]
    roots += [(f"argument {k!r}", v) for k, v in shipped.kwargs.items()]
    path = _find(roots, bad) or _find([("its " + lab[len(_THEN):], v) for lab, v in _parts(fn)], bad)
    kind = _codec.describe_type(bad)
    article = "an" if kind[:1].lower() in "aeiou" else "a"
    return (
        f"cannot ship {name} into the sandbox: {path or 'something it uses'} is {article} "
        f"{kind}, which may not travel with Sandbox.call (only values, "
        "capabilities, functions, classes and modules can). Expose it, wrap it with facet(), "
        "or pass the data it holds as values."
    )


_MAX_SEARCH = 100_000


def _find(roots: list[tuple[str, Any]], bad: Any) -> str | None:
    """How ``bad`` is reached from one of ``roots``, e.g. ``its global 'X'[2].conn``."""
    seen: set[int] = set()
    stack = [(label, value, 0) for label, value in reversed(roots)]
    while stack and len(seen) < _MAX_SEARCH:
        label, value, depth = stack.pop()
        if value is bad:
            return label
        if id(value) in seen or depth > 50 or type(value) in _codec.SCALARS:
            continue
        seen.add(id(value))
        for step, part in reversed(list(_parts(value))):
            stack.append((label + step, part, depth + 1))
    return None


def _parts(obj: Any) -> Iterator[tuple[str, Any]]:
    """What shipping ``obj`` ships along, each with the step that reaches it."""
    if isinstance(obj, types.FunctionType):
        yield from _function_parts(obj)
    elif isinstance(obj, dict):
        for k, v in list(obj.items()):
            yield f"[{k!r}]", v
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for i, v in enumerate(obj):
            yield f"[{i}]", v
    elif isinstance(obj, enum.Enum):
        yield ".value", obj.value
    elif isinstance(obj, enum.EnumMeta):
        yield from ((f".{k}", v) for k, v in obj.__members__.items())
    elif isinstance(obj, functools.partial):
        yield ".func", obj.func
        yield ".args", obj.args
        yield ".keywords", obj.keywords
    elif isinstance(obj, types.CellType):
        try:
            yield "", obj.cell_contents
        except ValueError:
            pass
    elif isinstance(obj, (property, classmethod, staticmethod, types.MethodType)):
        for attr in ("fget", "fset", "fdel", "__func__", "__self__"):
            if getattr(obj, attr, None) is not None:
                yield f".{attr}", getattr(obj, attr)
    elif not isinstance(obj, types.ModuleType) and hasattr(obj, "__dict__"):
        for k, v in list(vars(obj).items()):
            yield f".{k}", v


def _function_parts(fn: types.FunctionType) -> Iterator[tuple[str, Any]]:
    code = fn.__code__
    g = fn.__globals__
    for name in sorted(_cp._extract_code_globals(code)):
        if name in g:
            yield f"{_THEN}global {name!r}", g[name]
    for name, cell in zip(code.co_freevars, fn.__closure__ or ()):
        yield f"{_THEN}closure variable {name!r}", cell
    if fn.__defaults__:
        names = code.co_varnames[code.co_argcount - len(fn.__defaults__):code.co_argcount]
        for name, value in zip(names, fn.__defaults__):
            yield f"{_THEN}default of {name!r}", value
    for name, value in (fn.__kwdefaults__ or {}).items():
        yield f"{_THEN}default of {name!r}", value
    for name, value in vars(fn).items():
        yield f"{_THEN}attribute {name!r}", value


_THEN = ", whose "
