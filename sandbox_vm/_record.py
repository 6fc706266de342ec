"""Frozen plain-data classes for the modules a fork server imports before it serves.

:func:`record` gives a class what ``@dataclasses.dataclass(frozen=True)`` would: an
``__init__`` taking the annotated fields (positionally or by name, class attributes as
defaults, then ``__post_init__`` if defined), ``__repr__``, ``__eq__`` and ``__hash__``
over the compared fields, ``__match_args__``, and no assignment after ``__init__``.
Instances pickle as plain ``__dict__`` state. It exists because ``dataclasses``
imports ``inspect`` (and with it ``ast``, ``dis``, ``tokenize``...): tens of
milliseconds before a fresh fork server could start its first sandbox.
"""

from __future__ import annotations

__all__ = ["FrozenInstanceError", "record"]


class FrozenInstanceError(AttributeError):
    """Assigning to (or deleting) a field of a record."""


def record(cls: type | None = None, *, uncompared: tuple[str, ...] = ()):
    """Make ``cls`` a frozen record (see the module docstring).

    Fields are the names annotated in the class body, in order; ``uncompared`` ones
    are shown by ``repr`` but left out of ``==`` and ``hash``.
    """
    def wrap(cls: type) -> type:
        return _build(cls, uncompared)

    return wrap if cls is None else wrap(cls)


def _nothing(self: object) -> None:
    pass


_TEMPLATES: dict[int, object] = {}


def _template(n: int):
    """The code of ``def __init__(self, a0, .., a<n-1>)`` setting field ``i`` to ``a<i>``."""
    if n not in _TEMPLATES:
        args = [f"a{i}" for i in range(n)]
        body = "".join(f"    _set(self, _fields[{i}], a{i})\n" for i in range(n))
        src = f"def __init__(self, {', '.join(args)}):\n{body}    _post_init(self)\n"
        scope: dict = {}
        exec(src, scope)  # fixed text: only n varies
        _TEMPLATES[n] = scope["__init__"].__code__
    return _TEMPLATES[n]


def _build(cls: type, uncompared: tuple[str, ...]) -> type:
    fields = tuple(cls.__dict__.get("__annotations__", {}))
    compared = tuple(f for f in fields if f not in uncompared)
    defaults = {f: cls.__dict__[f] for f in fields if f in cls.__dict__}
    for before, after in zip(fields, fields[1:]):
        if before in defaults and after not in defaults:
            raise TypeError(f"non-default field {after!r} follows a default one in {cls.__qualname__}")
    post_init = getattr(cls, "__post_init__", None)
    scope = {"_set": object.__setattr__, "_fields": fields, "_post_init": post_init or _nothing}
    # One compiled template per number of fields, renamed for this class: compiling
    # source per class would cost a fresh fork server ~0.1 ms a class.
    code = _template(len(fields)).replace(co_varnames=("self", *fields), co_name="__init__",
                                          co_qualname=f"{cls.__qualname__}.__init__")
    init = type(_nothing)(code, scope, "__init__", tuple(defaults[f] for f in fields if f in defaults))
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__

    def __repr__(self) -> str:
        inner = ", ".join(f"{f}={getattr(self, f)!r}" for f in fields)
        return f"{type(self).__qualname__}({inner})"

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return tuple(getattr(self, f) for f in compared) == tuple(getattr(other, f) for f in compared)

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, f) for f in compared))

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    for name, value in (("__init__", init), ("__repr__", __repr__), ("__eq__", __eq__),
                        ("__hash__", __hash__), ("__setattr__", __setattr__), ("__delattr__", __delattr__)):
        if name != "__init__" and name in cls.__dict__:
            continue  # the class defines its own
        if name != "__init__":
            value.__qualname__ = f"{cls.__qualname__}.{name}"
        setattr(cls, name, value)
    cls.__match_args__ = fields  # type: ignore[attr-defined]
    return cls
