"""Shipping a host function by value for ``Sandbox.call`` (cloudpickle).

The function travels with its closure and the globals it uses, by an explicit
allow-list of what may ride along:

* values (the types that cross by value everywhere, and registered value types);
* capabilities and proxies, by reference (as in any call);
* functions, classes and their parts (code, cells, descriptors, annotations),
  by value when the shipper defined them and by name when the sandbox can import
  them; enum members; modules by name (imported inside the sandbox).

Anything else stops the call with :class:`CapabilityError` naming the global and its
type, so a host object held in a module global - a config object, a connection, a
client with a password in its ``__dict__`` - can't ride along, whatever its class or
metaclass.
"""

from __future__ import annotations

import enum
import functools
import io
import sys
import types
from typing import Any

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


def _importable_inside(module: str | None, allowed: frozenset[str]) -> bool:
    if not module:
        return False
    top = module.partition(".")[0]
    return top in sys.stdlib_module_names or top in allowed or top in ("capbridge", "cloudpickle", "tblib")


#: Modules whose own classes make the parts of function and class definitions
#: (annotations, dataclass fields, enum and abc bookkeeping). Only the object's own
#: class counts, never its metaclass.
_MACHINERY = frozenset({"typing", "dataclasses", "enum", "functools", "abc", "types",
                        "collections.abc", "_collections_abc"})


def _is_annotation(obj: Any) -> bool:
    """A part of a definition (``List[int]``, a TypeVar, a dataclass Field, ...)."""
    return type(obj).__module__ in _MACHINERY


class _ShipPickler(cloudpickle.Pickler):
    def __init__(self, file: Any, session: Any) -> None:
        super().__init__(file, protocol=5)
        self._session = session

    def persistent_id(self, obj: Any) -> Any:
        return shipping_pid(self._session, obj)

    def reducer_override(self, obj: Any) -> Any:
        allowed = self._session.allow_modules
        if isinstance(obj, types.FunctionType):
            if not _importable_inside(getattr(obj, "__module__", None), allowed):
                _check_globals(self._session, obj)
                return self._dynamic_function_reduce(obj)
        elif isinstance(obj, type):
            if not _importable_inside(getattr(obj, "__module__", None), allowed):
                return _cp._dynamic_class_reduce(obj)
        return super().reducer_override(obj)


def shipping_pid(session: Any, obj: Any) -> Any:
    """The persistent id of ``obj`` while shipping (None: pickle it as is)."""
    t = type(obj)
    if t in _codec.PLAIN_TYPES:
        return None
    if t in _codec.STDLIB_VALUE_TYPES or _codec.is_ndarray(obj):
        return _codec.encode_value_record(obj)
    if isinstance(obj, (Proxy, Bound, InboundProxy)) or value_type_of(t) is not None:
        return session.pid_out(obj, None, None, None)
    if isinstance(obj, type):
        vt = value_type_of(obj)
        if vt is not None:
            # The sandbox uses its own class of that value type, so instances it
            # makes cross back as fields.
            return ("v", "vtclass", (vt.name, vt.fields, vt.is_tuple))
        return None
    if isinstance(obj, _CODE_PARTS) or isinstance(obj, enum.Enum) or _is_annotation(obj):
        return None
    if isinstance(obj, types.MethodType):
        if isinstance(obj.__self__, (type, types.ModuleType)):
            return None
        return session.export(obj, None, None)  # bound to an instance: a callable capability
    if interface_of(obj) is not None:
        return session.export(obj, None, None)
    raise CapabilityError(
        f"cannot ship a {_codec.describe_type(obj)} into the sandbox: only values, "
        "capabilities, functions, classes and modules can travel with Sandbox.call "
        "(expose it, wrap it with facet(), or pass the data it holds as values)"
    )


def _check_globals(session: Any, fn: types.FunctionType) -> None:
    """Name the global that would leak, before cloudpickle walks into it."""
    names = _cp._extract_code_globals(fn.__code__)
    g = fn.__globals__
    for name in names:
        if name not in g:
            continue
        value = g[name]
        try:
            _shippable(session, value)
        except CapabilityError as exc:
            raise CapabilityError(
                f"cannot ship {fn.__qualname__}: its global {name!r} is a "
                f"{_codec.describe_type(value)}, which may not travel into the sandbox ({exc})"
            ) from None


def _shippable(session: Any, value: Any, depth: int = 0) -> None:
    """Raise CapabilityError if ``value`` (a global) may not ride along."""
    t = type(value)
    if t in (list, tuple, set, frozenset) and depth < 4:
        for x in value:
            _shippable(session, x, depth + 1)
        return
    if t is dict and depth < 4:
        for k, v in value.items():
            _shippable(session, k, depth + 1)
            _shippable(session, v, depth + 1)
        return
    t_ok = (t in _codec.PLAIN_TYPES or t in _codec.STDLIB_VALUE_TYPES or _codec.is_ndarray(value)
            or isinstance(value, (type, Proxy, Bound, InboundProxy, types.MethodType) + _CODE_PARTS)
            or isinstance(value, enum.Enum) or _is_annotation(value) or value_type_of(t) is not None
            or interface_of(value) is not None)
    if not t_ok:
        raise CapabilityError("it is neither a value nor a capability")


def ship(shipped: Any, session: Any) -> bytes:
    """Pickle ``(fn, args, kwargs)`` of a ShippedCall for the sandbox."""
    buf = io.BytesIO()
    _ShipPickler(buf, session).dump((shipped.fn, shipped.args, shipped.kwargs))
    return buf.getvalue()
