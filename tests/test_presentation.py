"""What a person sees of a proxy: signatures, help() and dir() show the host object.

Signatures travel as the text the host prints; inside the sandbox they are rebuilt
without evaluating anything. Descriptors from the sandbox (on the host) never become
signatures at all, only text.
"""

from __future__ import annotations

import enum
import inspect
import pydoc
import typing

import pytest

from capbridge import expose
from capbridge._presentation import help_target, signature_from_text
from capbridge._proxy import InterfaceDesc, build_proxy_class


class Color(enum.Enum):
    RED = 1


SENTINEL = object()


def f_plain(a, b=2, *args, c, d=4, **kw): ...
def f_annotated(path: str, mode: "str" = "rb", *, size: int | None = None) -> list[str]: ...
def f_positional(x: int, /, y: float = 1.5) -> None: ...
def f_typing(items: typing.Sequence[typing.Mapping[str, int]], cb: typing.Callable[[int], str] = str) -> dict: ...
def f_angle(default=SENTINEL, color: Color = Color.RED, fn=lambda: 1): ...
def f_strings(sep: str = ", ", quote: str = "'\"", nl: str = "\n") -> bytes: ...
def f_empty(): ...
def f_tricky(__cb_repr0__=SENTINEL, b="__cb_repr0__"): ...


@pytest.mark.parametrize("fn", [f_plain, f_annotated, f_positional, f_typing, f_angle, f_strings, f_empty,
                                f_tricky])
def test_signatures_print_as_on_the_host(fn):
    text = str(inspect.signature(fn))
    rebuilt = signature_from_text(text)
    assert rebuilt is not None, text
    assert str(rebuilt) == text
    assert [p.kind for p in rebuilt.parameters.values()] == [p.kind for p in inspect.signature(fn).parameters.values()]


def test_rebuilding_evaluates_nothing(tmp_path):
    marker = tmp_path / "ran"
    text = f"(a=open({str(marker)!r}, 'w'), b: __import__('os').abort() = 1) -> [][1]"
    sig = signature_from_text(text)
    assert str(sig) == text
    assert not marker.exists()


@pytest.mark.parametrize("text", ["", "x", "(", "(a, a)", "(a=1, b)", "(**kw, a)", "(a): pass\nimport os\ndef g(",
                                  "(" + "[" * 5000 + ")", "(a=<broken)"])
def test_unusable_text_gives_no_signature(text):
    assert signature_from_text(text) is None


def _desc(methods=(), props=(), dunders=(), *, callable_=False, call_sig="", name="Thing", doc="A thing."):
    return InterfaceDesc((name, doc, tuple(methods), tuple(props), tuple(dunders), callable_, call_sig, False))


def test_descriptors_from_the_sandbox_stay_text():
    """On the host (trusted=False) a signature is never rebuilt, only shown in the docstring."""
    desc = _desc(methods=[("run", "Run it.", "(a=__import__('os').abort())")])
    cls = build_proxy_class(desc, trusted=False)
    assert str(inspect.signature(cls.run)) == "(self, *args, **kwargs)"
    assert cls.run.__doc__.startswith("run(a=__import__('os').abort())")
    target = help_target(desc, trusted=False)
    assert str(inspect.signature(target.run)) == "(*args, **kwargs)"
    assert "run(a=__import__('os').abort())" in pydoc.plaintext.document(target)


class Inventory:
    """Counts things."""

    def __init__(self):
        self._items = {}

    @expose
    def add(self, name: str, qty: int = 1, *, note: str | None = None) -> None:
        """Add ``qty`` of ``name``.

        A second paragraph.
        """

    @expose
    def count(self, name: str, /) -> int:
        """How many ``name`` there are."""

    @expose
    def __len__(self) -> int:
        """Number of kinds."""
        return 0

    def reset(self):
        """Not exposed."""


def search(query: str, *, limit: int = 10) -> list[str]:
    """Search the index for ``query``."""
    return []


def _member_blocks(text: str, names: list[str]) -> dict[str, str]:
    """The ``name(...)`` line and its docstring lines of each member in pydoc's class text."""
    lines = text.splitlines()
    out = {}
    for name in names:
        start = next(i for i, l in enumerate(lines) if l.startswith(f" |  {name}("))
        end = start + 1
        while end < len(lines) and lines[end].startswith(" |      "):
            end += 1
        out[name] = "\n".join(lines[start:end])
    return out


def test_help_matches_the_hosts_help_for_each_exposed_member(sandbox_factory):
    out = []
    inv = Inventory()
    sb = sandbox_factory({"inventory": inv, "search": search}, stdout=out.append)
    sb.exec("help(inventory)")
    inside = "".join(out)
    host = pydoc.render_doc(inv, renderer=pydoc.plaintext)
    names = ["add", "count", "__len__"]
    assert _member_blocks(inside, names) == _member_blocks(host, names)
    assert " |  Counts things." in inside
    assert "reset" not in inside and "__init__" not in inside and "__dict__" not in inside
    for machinery in ("__del__", "__reduce_ex__", "__getattr__", "__setattr__", "__dir__", "__new__",
                      "__weakref__", "Proxy", "_cb_", "*args", "Method resolution order", "__annotations__"):
        assert machinery not in inside, machinery

    out.clear()
    sb.exec("help(search)")
    inside = "".join(out)
    host = pydoc.render_doc(search, renderer=pydoc.plaintext)
    assert inside.split("\n", 1)[1].strip() == host.split("\n", 1)[1].strip()  # all but the title line
    assert inside.startswith("Help on search:")


def test_signatures_and_dir_inside(sandbox_factory):
    sb = sandbox_factory({"inventory": Inventory(), "search": search})
    assert sb.eval("str(__import__('inspect').signature(inventory.add))") == str(
        inspect.signature(Inventory().add))
    assert sb.eval("str(__import__('inspect').signature(inventory.count))") == str(
        inspect.signature(Inventory().count))
    assert sb.eval("str(__import__('inspect').signature(search))") == str(inspect.signature(search))
    assert sb.eval("inventory.add.__doc__") == inspect.getdoc(Inventory.add)
    assert sb.eval("dir(inventory)") == ["__len__", "add", "count"]
    assert sb.eval("type(inventory).__name__, type(search).__name__") == ("Inventory", "search")
    assert sb.stats()["calls_to_host"] == 0
