"""Tab completion for ``capbridge shell``, in two halves.

readline runs on the host, where the line is edited, but only the sandbox knows its
names, modules and objects. So on each Tab the host's :class:`ShellCompleter` ships
the line to :func:`candidates`, which runs inside the sandbox (by reference, with
:meth:`Sandbox.call <capbridge.Sandbox.call>`). A proxy's members come from its
interface, which the sandbox already holds: completing ``fs.lis`` never calls the
host object, and Tab never runs a property. What the sandbox answers is untrusted and
checked before readline sees it.

This module is imported inside the sandbox, so it imports only the standard library
at the top.
"""

from __future__ import annotations

import builtins
import functools
import inspect
import keyword
import re
import sys
from typing import Any, Callable

__all__ = ["candidates", "checked_matches", "ShellCompleter"]

#: At most this many candidates are offered, each at most this long.
MAX_MATCHES = 1000
MAX_MATCH_LEN = 300

_IMPORT_RE = re.compile(r"^\s*import\s+(?:[\w.]+\s*,\s*)*$")
_FROM_RE = re.compile(r"^\s*from\s+$")
_FROM_IMPORT_RE = re.compile(r"^\s*from\s+([\w.]+)\s+import\s+(?:\w+\s*,\s*)*$")
_MISSING = object()
_TOP_LEVEL: list[str] = []


# ---------------------------------------------------------------------- in the sandbox


def candidates(line: str, begidx: int, endidx: int) -> list[str]:
    """Completions of ``line[begidx:endidx]`` in the sandbox's ``__main__``."""
    text, head = line[begidx:endidx], line[:begidx]
    if _IMPORT_RE.match(head) or _FROM_RE.match(head):
        found = _module_names(text)
    elif m := _FROM_IMPORT_RE.match(head):
        found = _from_import_names(m.group(1), text)
    elif "." in text:
        found = _attribute_matches(text, sys.modules["__main__"].__dict__)
    else:
        found = _global_matches(text, sys.modules["__main__"].__dict__)
    return sorted(set(found))[:MAX_MATCHES]


def _visible(name: str, prefix: str) -> bool:
    """rlcompleter's rule: ``_names`` only once ``_`` is typed, ``__names`` once ``__`` is."""
    if not name.startswith(prefix):
        return False
    if not prefix:
        return not name.startswith("_")
    if prefix == "_":
        return not name.startswith("__")
    return True


def _postfix(value: Any) -> str:
    return "(" if callable(value) or isinstance(value, (classmethod, staticmethod)) else ""


def _global_matches(text: str, namespace: dict[str, Any]) -> list[str]:
    out = []
    for word in keyword.kwlist:
        if word.startswith(text):
            if word in ("finally", "try"):
                word += ":"
            elif word not in ("False", "None", "True", "break", "continue", "pass", "else"):
                word += " "
            out.append(word)
    for ns in (namespace, vars(builtins)):
        for name, value in list(ns.items()):
            if _visible(name, text):
                out.append(name + _postfix(value))
    return out


def _members(obj: Any) -> list[str]:
    from ._proxy import Proxy

    if isinstance(obj, Proxy):
        return list(dir(obj))  # the interface, held here
    names = set(dir(obj))
    if isinstance(obj, type):
        return list(names)
    klass = getattr(type(obj), "__mro__", ())
    for base in klass:
        names.update(vars(base))
    return list(names)


def _step(obj: Any, name: str) -> Any:
    """``getattr(obj, name)`` unless that would run a property or call the host."""
    from ._proxy import Proxy

    if isinstance(obj, Proxy):
        desc = type(obj)._cb_desc
        return getattr(obj, name) if name in desc.methods else _MISSING  # a bound method, made here
    static = inspect.getattr_static(obj, name, _MISSING)
    if static is _MISSING or not hasattr(type(static), "__get__"):
        return static  # absent, or a plain value: what getattr would return
    if isinstance(static, (property, functools.cached_property)) or type(static).__module__ != "builtins":
        return _MISSING  # a descriptor written in Python: Tab does not run it
    try:
        return getattr(obj, name)  # functions, class and static methods, slots
    except Exception:  # noqa: BLE001 - a failed lookup just completes nothing
        return _MISSING


def _attribute_matches(text: str, namespace: dict[str, Any]) -> list[str]:
    expr, _, attr = text.rpartition(".")
    parts = expr.split(".")
    if not all(p.isidentifier() for p in parts):
        return []
    obj = namespace.get(parts[0], vars(builtins).get(parts[0], _MISSING))
    for name in parts[1:]:
        if obj is _MISSING:
            return []
        obj = _step(obj, name)
    if obj is _MISSING:
        return []
    out = []
    for name in _members(obj):
        if isinstance(name, str) and _visible(name, attr):
            static = inspect.getattr_static(obj, name, None)
            out.append(f"{expr}.{name}{_postfix(static)}")
    return out


def _modules_in(paths: Any) -> set[str]:
    """Names importable from the directories ``paths``.

    Lists them with ``posix.scandir``: with a file system granted, ``os`` and
    ``pkgutil`` see the virtual tree, while imports still read the real one.
    """
    import posix
    from importlib.machinery import all_suffixes

    suffixes = sorted(all_suffixes(), key=len, reverse=True)
    names: set[str] = set()
    for path in list(paths or ()):
        if not isinstance(path, str):
            continue
        try:
            entries = list(posix.scandir(path or "."))
        except OSError:
            continue
        for entry in entries:
            name = entry.name
            try:
                is_dir = entry.is_dir()
            except OSError:
                continue
            if is_dir:
                stem = name
            else:
                stem = next((name[: -len(s)] for s in suffixes if name.endswith(s)), "")
                stem = stem.partition(".")[0]  # spam.cpython-311-x86_64-linux-gnu.so
            if stem.isidentifier() and stem != "__pycache__":
                names.add(stem)
    return names


def _top_level_modules() -> list[str]:
    if not _TOP_LEVEL:
        names = set(sys.builtin_module_names) | _modules_in(sys.path)
        names.update(n for n in sys.modules if "." not in n)
        _TOP_LEVEL.extend(sorted(names))
    return _TOP_LEVEL


def _import(name: str) -> Any:
    import importlib

    try:
        return importlib.import_module(name)
    except Exception:  # noqa: BLE001 - not importable: nothing to complete
        return None


def _submodules(package: str) -> list[str]:
    mod = _import(package)
    names = _modules_in(getattr(mod, "__path__", None)) - {"__init__", "__main__"}
    depth = package.count(".") + 1
    names.update(n.rpartition(".")[2] for n in sys.modules if n.startswith(package + ".") and n.count(".") == depth)
    return list(names)


def _module_names(text: str) -> list[str]:
    package, _, part = text.rpartition(".")
    if package:
        if not all(p.isidentifier() for p in package.split(".")):
            return []
        return [f"{package}.{n}" for n in _submodules(package) if _visible(n, part)]
    return [n for n in _top_level_modules() if _visible(n, part)]


def _from_import_names(module: str, text: str) -> list[str]:
    if not all(p.isidentifier() for p in module.split(".")):
        return []
    mod = _import(module)
    names = set(_submodules(module))
    if mod is not None:
        names.update(getattr(mod, "__all__", None) or dir(mod))
    return [n for n in names if isinstance(n, str) and _visible(n, text)]


# ---------------------------------------------------------------------- on the host


def checked_matches(result: Any, text: str) -> list[str]:
    """The usable completions in ``result``, an untrusted answer from the sandbox.

    Keeps printable strings that extend ``text`` (readline replaces the word being
    completed with a match, so anything else would rewrite what the user typed), at
    most :data:`MAX_MATCHES` of at most :data:`MAX_MATCH_LEN` characters.
    """
    if type(result) not in (list, tuple):
        return []
    out = []
    for item in result[:MAX_MATCHES]:
        if type(item) is str and len(item) <= MAX_MATCH_LEN and item.isprintable() and item.startswith(text):
            out.append(item)
    return out


class ShellCompleter:
    """readline's completer for the shell; ``ask(line, begidx, endidx)`` asks the sandbox.

    Tab at the start of a line (or in its indentation) indents by four spaces.
    ``ask`` may raise: a failed lookup offers nothing.
    """

    INDENT = "    "

    def __init__(self, ask: Callable[[str, int, int], Any], readline: Any) -> None:
        self.ask = ask
        self.readline = readline
        self.matches: list[str] = []

    def __call__(self, text: str, state: int) -> str | None:
        if state == 0:
            rl = self.readline
            line, begidx, endidx = rl.get_line_buffer(), rl.get_begidx(), rl.get_endidx()
            if not line[:endidx].strip():
                rl.insert_text(self.INDENT)
                rl.redisplay()
                self.matches = [""]
            else:
                try:
                    self.matches = checked_matches(self.ask(line, begidx, endidx), text)
                except Exception:  # noqa: BLE001 - the statement after will report a dead sandbox
                    self.matches = []
        return self.matches[state] if state < len(self.matches) else None
