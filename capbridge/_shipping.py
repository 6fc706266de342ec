"""Shipping a host function by value for ``Sandbox.call`` (cloudpickle).

The function travels with its closure and the globals it uses, by the same rules as
everything else: values by value, capabilities by reference, functions and classes
by value, modules by name (imported inside the sandbox). Any other object found on
the way stops the call with :class:`CapabilityError` naming its type, so a host
object held in a module global can't ride along.
"""

from __future__ import annotations

import io
import sys
import types
from typing import Any

import cloudpickle
from cloudpickle import cloudpickle as _cp

__all__ = ["ship"]


def _importable_inside(module: str | None, allowed: frozenset[str]) -> bool:
    if not module:
        return False
    top = module.partition(".")[0]
    return top in sys.stdlib_module_names or top in allowed or top in ("capbridge", "cloudpickle", "tblib")


class _ShipPickler(cloudpickle.Pickler):
    def __init__(self, file: Any, session: Any) -> None:
        super().__init__(file, protocol=5)
        self._session = session

    def persistent_id(self, obj: Any) -> Any:
        return self._session.pid_for_shipping(obj)

    def reducer_override(self, obj: Any) -> Any:
        allowed = self._session.allow_modules
        if isinstance(obj, types.FunctionType):
            if not _importable_inside(getattr(obj, "__module__", None), allowed):
                return self._dynamic_function_reduce(obj)
        elif isinstance(obj, type):
            if not _importable_inside(getattr(obj, "__module__", None), allowed):
                return _cp._dynamic_class_reduce(obj)
        return super().reducer_override(obj)


def ship(shipped: Any, session: Any) -> bytes:
    """Pickle ``(fn, args, kwargs)`` of a ShippedCall for the sandbox."""
    buf = io.BytesIO()
    _ShipPickler(buf, session).dump((shipped.fn, shipped.args, shipped.kwargs))
    return buf.getvalue()
