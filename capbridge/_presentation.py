"""How a proxy presents the object behind it to a person: signatures and ``help()``.

The host sends each exposed member's signature as the text ``str(inspect.signature())``
printed on its side. In the sandbox that text is rebuilt into an
:class:`inspect.Signature` whose annotations and defaults print exactly as the host
wrote them; nothing in it is evaluated.

``help(proxy)`` documents a stand-in built from the interface: a plain class (or
function) holding only the exposed members with their host signatures and docstrings,
so pydoc shows what the host's own ``help()`` shows for those members and nothing of
the proxy machinery. pydoc documents ``obj.__origin__`` instead of ``type(obj)`` when
an object has one (it does so for typing aliases); proxies use that hook.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # (typing is not imported at run time: it costs start-up)
    import ast
    import inspect
    import re
    from typing import Any

# ast and inspect are imported when a signature is first rebuilt, not with this module:
# a fresh fork server imports it before its first sandbox, and they cost milliseconds
# there (the server imports them later, while idle).

__all__ = ["HelpHook", "class_name", "help_target", "signature_from_text", "with_self"]

#: reprs such as <object object at 0x7f...> or <Color.RED: 1>, which are not Python.
_ANGLE_REPR = r"<[^<>\n]*>"


class _Shown:
    """An annotation or default value that prints as the host printed it."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def class_name(desc_name: str) -> str:
    """A class name for an interface named ``desc_name`` (``Inventory.add`` -> ``add``)."""
    last = desc_name.rpartition(".")[2]
    return last if last.isidentifier() else "Proxy"


def _parse(text: str) -> tuple[str, ast.arguments, ast.expr | None] | None:
    import ast

    source = f"def _f{text}: pass"
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.FunctionDef):
        return None
    fn = tree.body[0]
    if fn.decorator_list or len(fn.body) != 1:
        return None
    return source, fn.args, fn.returns


def signature_from_text(text: str) -> inspect.Signature | None:
    """The signature printed as ``text`` on the host, or None if it cannot be rebuilt."""
    if not text or not text.startswith("("):
        return None
    import ast
    import inspect
    import re

    param = inspect.Parameter
    originals: list[str] = []
    mark = "__cb_repr"
    while mark in text:  # a placeholder must not occur in the text itself
        mark += "_"
    placeholder = re.compile(re.escape(mark) + r"(\d+)__")

    def hide(match: re.Match) -> str:
        originals.append(match.group(0))
        return f"{mark}{len(originals) - 1}__"

    parsed = _parse(text)
    hidden = text
    for _ in range(8):  # innermost first: <function <lambda> at 0x...>
        if parsed is not None:
            break
        hidden, n = re.subn(_ANGLE_REPR, hide, hidden)
        if not n:
            return None
        parsed = _parse(hidden)
    if parsed is None:
        return None
    source, args, returns = parsed

    def restore(segment: str) -> str:
        def back(m: re.Match) -> str:
            i = int(m.group(1))
            return originals[i] if i < len(originals) else m.group(0)

        for _ in range(len(originals)):  # one pass per level of nesting at most
            segment = placeholder.sub(back, segment)
        return segment

    def shown(node: ast.AST | None) -> Any:
        if node is None:
            return inspect.Parameter.empty
        return _Shown(restore(ast.get_source_segment(source, node) or ""))

    params: list[inspect.Parameter] = []
    positional = [*args.posonlyargs, *args.args]
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    for i, (arg, default) in enumerate(zip(positional, defaults)):
        kind = param.POSITIONAL_ONLY if i < len(args.posonlyargs) else param.POSITIONAL_OR_KEYWORD
        params.append(param(arg.arg, kind, default=shown(default), annotation=shown(arg.annotation)))
    if args.vararg is not None:
        params.append(param(args.vararg.arg, param.VAR_POSITIONAL, annotation=shown(args.vararg.annotation)))
    for arg, default in zip(args.kwonlyargs, args.kw_defaults):
        params.append(param(arg.arg, param.KEYWORD_ONLY, default=shown(default), annotation=shown(arg.annotation)))
    if args.kwarg is not None:
        params.append(param(args.kwarg.arg, param.VAR_KEYWORD, annotation=shown(args.kwarg.annotation)))
    try:
        return inspect.Signature(params, return_annotation=shown(returns))
    except (ValueError, TypeError):
        return None


def with_self(sig: inspect.Signature) -> inspect.Signature | None:
    """``sig`` with a leading ``self``, as a method's signature reads in a class."""
    import inspect

    param = inspect.Parameter
    rest = list(sig.parameters.values())
    kind = param.POSITIONAL_ONLY if rest and rest[0].kind is param.POSITIONAL_ONLY else param.POSITIONAL_OR_KEYWORD
    params = [param("self", kind), *rest]
    try:
        return sig.replace(parameters=params)
    except ValueError:
        return None


def _stub(name: str, doc: str, sig: inspect.Signature | None) -> Any:
    def stub(*args: Any, **kwargs: Any) -> None:
        raise TypeError("this object only documents a capability; use the capability itself")

    stub.__name__ = stub.__qualname__ = name
    stub.__annotations__ = {}
    stub.__doc__ = doc or None
    stub.__module__ = "capbridge.proxy"
    if sig is not None:
        stub.__signature__ = sig  # type: ignore[attr-defined]
    return stub


def _member_stub(name: str, doc: str, sig_text: str, trusted: bool) -> Any:
    sig = signature_from_text(sig_text) if trusted else None
    if sig is None:
        # Signatures from an untrusted peer are only ever shown as text.
        doc = f"{name}{sig_text}\n\n{doc}".strip() if sig_text else doc
        return _stub(name, doc, None)
    return _stub(name, doc, with_self(sig))


def _no_value(self: Any, *args: Any) -> None:
    raise TypeError("this object only documents a capability; use the capability itself")


def help_target(desc: Any, trusted: bool) -> Any:
    """What ``help()`` of a proxy with interface ``desc`` documents."""
    function_like = desc.callable and not desc.methods and not desc.properties and set(desc.dunders) <= {"__call__"}
    if function_like:
        sig = signature_from_text(desc.call_signature) if trusted else None
        doc = desc.doc if sig is not None or not desc.call_signature else f"{desc.name}{desc.call_signature}\n\n{desc.doc}"
        fn = _stub(class_name(desc.name), doc.strip(), sig)
        fn.__qualname__ = desc.name
        return fn
    ns: dict[str, Any] = {"__slots__": (), "__doc__": desc.doc or None, "__module__": "capbridge.proxy"}
    for name, (doc, sig_text) in {**desc.methods, **desc.dunders}.items():
        ns[name] = _member_stub(name, doc, sig_text, trusted)
    if desc.callable and "__call__" not in ns:
        ns["__call__"] = _member_stub("__call__", "", desc.call_signature, trusted)
    for name, (doc, settable) in desc.properties.items():
        ns[name] = property(_no_value, _no_value if settable else None, None, doc or None)
    return type(class_name(desc.name), (), ns)


class HelpHook:
    """Class attribute ``__origin__`` of proxies: pydoc's ``help(proxy)`` documents it."""

    def __get__(self, obj: Any, cls: type) -> Any:
        if obj is None:
            raise AttributeError("__origin__")
        cached = cls.__dict__.get("_cb_help")
        if cached is None:
            cached = help_target(cls._cb_desc, cls._cb_trusted)
            type.__setattr__(cls, "_cb_help", cached)
        return cached
