"""``capbridge shell`` at a terminal: completion, history, help() and Ctrl-C.

The shell runs under a pseudo-terminal (tests/pty_shell.py), so readline is live and
Ctrl-C is the terminal's SIGINT, as for a person typing.
"""

from __future__ import annotations

import textwrap
import time

import pytest
from conftest import CONFINEMENT, make_sandbox
from pty_shell import CTRL_C, TAB, UP, PtyShell

from capbridge import expose
from capbridge._completion import candidates, checked_matches

APP = textwrap.dedent('''
    import pathlib
    from capbridge import expose

    LOG = pathlib.Path(__file__).with_name("host_calls.log")

    class Inventory:
        """Counts things in the shop."""

        def __init__(self):
            self._items = {}

        @expose
        def add(self, name: str, qty: int = 1, *, note: str | None = None) -> None:
            """Add ``qty`` of ``name``."""
            with LOG.open("a") as f:
                f.write("add\\n")
            self._items[name] = self._items.get(name, 0) + qty

        @expose
        def count(self, name: str, /) -> int:
            """How many ``name`` there are."""
            with LOG.open("a") as f:
                f.write("count\\n")
            return self._items.get(name, 0)

        @expose
        @property
        def total(self) -> int:
            with LOG.open("a") as f:
                f.write("total\\n")
            return sum(self._items.values())

    def make():
        return Inventory()
''')


@pytest.fixture
def shell(tmp_path):
    (tmp_path / "shop.py").write_text(APP)
    data = tmp_path / "data"
    data.mkdir()
    (data / "notes.txt").write_text("hi\n")
    sh = PtyShell("--ro", f"{data}:/data", "--grant", "inventory=shop:make", cwd=tmp_path,
                  confinement=CONFINEMENT)
    sh.log = tmp_path / "host_calls.log"
    sh.prompt()
    yield sh
    sh.close()


def host_calls(sh) -> list[str]:
    return sh.log.read_text().split() if sh.log.exists() else []


def test_tab_completes_grants_proxy_attributes_and_modules(shell):
    shell.send("invent" + TAB)
    shell.expect_line(">>> inventory")
    shell.send(".co" + TAB)
    shell.expect_line(">>> inventory.count(")
    shell.send("'x')\n")
    assert shell.prompt().endswith("0\n>>> ")
    assert host_calls(shell) == ["count"]  # the call itself, nothing for the Tabs

    shell.send("fs.lis" + TAB)
    shell.expect_line(">>> fs.listdir(")
    shell.send("'/data')\n")
    assert "['notes.txt']" in shell.prompt()

    shell.send("import jso" + TAB)
    shell.expect_line(">>> import json")
    shell.send("\n")
    shell.prompt()
    shell.send("import os\n")
    shell.prompt()
    shell.send("os.list" + TAB + TAB)  # ambiguous: the second Tab lists the candidates
    listing = shell.expect(r">>> os\.list")
    assert "os.listdir(" in listing and "os.listxattr(" in listing
    shell.send("\x15")  # Ctrl-U clears the line

    shell.send("from collections import Ordered" + TAB)
    shell.expect_line(">>> from collections import OrderedDict")
    shell.send("\n")
    shell.prompt()


def test_tab_never_calls_the_host(shell):
    """Completing a proxy's members uses its interface; properties are not read."""
    shell.send("inventory." + TAB + TAB)
    listing = shell.expect(r">>> inventory\.")
    assert "inventory.add(" in listing and "inventory.count(" in listing and "inventory.total" in listing
    assert "_cb_" not in listing and "__del__" not in listing
    shell.send("to" + TAB)
    shell.expect_line(">>> inventory.total")
    shell.send("." + TAB + TAB)  # beyond a property: nothing, and no call
    shell.send("\x15print('done')\n")
    shell.expect("done")
    shell.prompt()
    assert host_calls(shell) == []


def test_completions_from_a_tampered_sandbox_are_checked(shell):
    """Sandbox code may replace the completer; the host keeps only sane matches."""
    shell.send("import capbridge._completion as c\n")
    shell.prompt()
    shell.send("c.candidates = lambda *a: ['zzz', 'inventory.x\\x1b[2J', 'inventory.' + 'y' * 5000, "
               "'inventory.ok(']\n")
    shell.prompt()
    shell.send("inventory." + TAB)
    shell.expect_line(">>> inventory.ok(")
    shell.send("\x15print('still fine')\n")
    shell.expect("still fine")
    shell.prompt()
    assert "\x1b[2J" not in shell.raw and "yyyy" not in shell.raw


def test_history_recalls_earlier_lines(shell):
    shell.send("print('first', 6 * 7)\n")
    shell.expect("first 42")
    shell.prompt()
    shell.send("x = 1\n")
    shell.prompt()
    shell.send(UP + UP + "\n")  # two lines back
    shell.expect(r"first 42")
    shell.prompt()


def test_tab_indents_a_block(shell):
    shell.send("def f():\n")
    shell.expect(r"\.\.\. ")
    shell.send(TAB + "return 'indented'\n")
    shell.expect(r"\.\.\. ")
    shell.send("\n")
    shell.prompt()
    shell.send("f()\n")
    assert "'indented'" in shell.prompt()


def test_help_shows_the_host_signatures_and_docstrings(shell):
    shell.send("help(inventory)\n")
    text = shell.prompt()
    assert "class Inventory(builtins.object)" in text
    assert " |  Counts things in the shop." in text
    assert " |  add(self, name: str, qty: int = 1, *, note: str | None = None) -> None" in text
    assert " |      Add ``qty`` of ``name``." in text
    assert " |  count(self, name: str, /) -> int" in text
    assert " |  total" in text
    for machinery in ("__del__", "__reduce_ex__", "__getattr__", "__weakref__", "Proxy", "_cb_",
                      "*args", "Method resolution order", "\"'str'\""):
        assert machinery not in text, machinery
    shell.send("help(inventory.add)\n")
    text = shell.prompt()
    assert "add(name: str, qty: int = 1, *, note: str | None = None) -> None" in text
    assert host_calls(shell) == []


def test_ctrl_c_interrupts_the_statement_and_keeps_the_shell(shell):
    shell.send("n = 5\n")
    shell.prompt()
    shell.send("import time\nprint('sleeping', flush=True); time.sleep(300)\n")
    shell.expect("sleeping")
    time.sleep(0.3)  # let the statement reach the sleep (not a timing assumption: any point works)
    shell.send(CTRL_C)
    out = shell.prompt()
    assert "KeyboardInterrupt" in out
    shell.send("print('alive', n)\n")
    shell.expect("alive 5")
    shell.prompt()


def test_ctrl_c_stops_a_busy_loop_and_the_shell_keeps_its_state(shell):
    shell.send("n = 7\n")
    shell.prompt()
    # One line: the loop starts right after the output the test waits for.
    shell.send("print('spin' + 'ning', flush=True); exec('while True: pass')\n")
    shell.expect("\nspinning")  # the output, not the echo of the line typed
    shell.send(CTRL_C)
    out = shell.prompt()
    assert "KeyboardInterrupt" in out
    assert "capbridge/" not in out and "sandbox_vm" not in out  # the user's frames only
    shell.send("print('alive', n)\n")
    shell.expect("alive 7")
    shell.prompt()
    shell.send("print('ag' + 'ain', flush=True); exec('while True: pass')\n")  # not a one-off
    shell.expect("\nagain")
    shell.send(CTRL_C)
    assert "KeyboardInterrupt" in shell.prompt()
    shell.send("print('still', n)\n")
    shell.expect("still 7")
    shell.prompt()


def _ctrl_c_at_prompt(shell):
    """Ctrl-C at a prompt until the shell answers. A SIGINT that lands while readline
    is still setting up the line (before it waits for a key) is seen by CPython's
    readline only at the next key: a person presses Ctrl-C again, and so does this."""
    for _ in range(3):
        shell.send(CTRL_C)
        try:
            return shell.expect("KeyboardInterrupt", timeout=5)
        except AssertionError:
            continue
    return shell.expect("KeyboardInterrupt")


def test_ctrl_c_at_the_prompt_clears_the_line(shell):
    shell.send("print('never')")
    shell.expect_line(">>> print('never')")
    _ctrl_c_at_prompt(shell)
    shell.prompt()
    shell.send("print('fresh')\n")
    out = shell.prompt()
    assert "fresh" in out and "never" not in out
    shell.send("def g():\n")  # in the middle of a block too
    shell.expect(r"\.\.\. ")
    _ctrl_c_at_prompt(shell)
    shell.prompt()
    shell.send("print(6 * 7)\n")
    assert "42" in shell.prompt()


def test_help_of_a_proxy_reads_as_help_of_the_host_object(tmp_path):
    """Each exposed member's entry in help() is the one pydoc writes for the host's
    class itself; what only the host has (``__init__``, ``__dict__``) is not there."""
    import pydoc
    import sys

    (tmp_path / "shop.py").write_text(APP)
    sys.path.insert(0, str(tmp_path))
    try:
        import shop
    finally:
        sys.path.remove(str(tmp_path))
    host_text = pydoc.render_doc(shop.make(), renderer=pydoc.plaintext)
    out = []
    sb = make_sandbox({"inventory": shop.make()}, stdout=out.append)
    try:
        sb.exec("import pydoc\nprint(pydoc.render_doc(inventory, renderer=pydoc.plaintext))")
    finally:
        sb.close()
        sys.modules.pop("shop", None)
    text = "".join(out)
    print(text)
    for entry in ("add(self, name: str, qty: int = 1, *, note: str | None = None) -> None\n"
                  "    Add ``qty`` of ``name``.",
                  "count(self, name: str, /) -> int\n    How many ``name`` there are.",
                  "Counts things in the shop."):
        assert entry in pydoc.plain(host_text).replace(" |  ", ""), entry
        assert entry in pydoc.plain(text).replace(" |  ", ""), entry
    assert "__init__" not in text and "__dict__" not in text and "capbridge" not in text


# ---------------------------------------------------------------------- the two halves


class Shop:
    """A shop."""

    def __init__(self):
        self.reads = 0

    @expose
    def buy(self, item: str) -> str:
        return item

    @expose
    @property
    def stock(self) -> int:
        self.reads += 1
        return 3


def test_candidates_inside_the_sandbox_use_the_interface_only():
    shop = Shop()
    sb = make_sandbox({"shop": shop})
    try:
        sb.exec("class Local:\n    @property\n    def boom(self):\n        raise SystemExit('ran')\nlocal = Local()\n")
        assert sb.call(candidates, "shop.b", 0, 6) == ["shop.buy("]
        assert sb.call(candidates, "shop.", 0, 5) == ["shop.buy(", "shop.stock"]
        assert sb.call(candidates, "shop.stock.", 0, 11) == []
        assert sb.call(candidates, "local.boom.", 0, 11) == []  # a property never runs
        assert sb.call(candidates, "x = sho", 4, 7) == ["shop"]
        assert sb.call(candidates, "import colle", 7, 12) == ["collections"]
        assert sb.call(candidates, "import collections.ab", 7, 21) == ["collections.abc"]
        assert "Counter" in sb.call(candidates, "from collections import Co", 24, 26)
        assert sb.call(candidates, "whil", 0, 4) == ["while "]
        assert shop.reads == 0
        assert sb.stats()["calls_to_host"] == 0
    finally:
        sb.close()


@pytest.mark.parametrize("answer, text, expected", [
    (["fs.listdir(", "fs.lstat("], "fs.l", ["fs.listdir(", "fs.lstat("]),
    (["os.system('x')", "fs.listdir("], "fs.l", ["fs.listdir("]),   # would rewrite the line
    (["fs.l\x1b]0;owned\x07"], "fs.l", []),                         # terminal control
    (["fs.l" + "x" * 1000], "fs.l", []),                            # too long
    ([b"fs.listdir", 3, None], "fs.l", []),                         # not str
    ("fs.listdir", "fs.l", []),                                     # not a list
    ({"fs.listdir": 1}, "fs.l", []),
    (["fs.l"] * 5000, "fs.l", ["fs.l"] * 1000),                     # bounded
])
def test_untrusted_answers_are_checked(answer, text, expected):
    assert checked_matches(answer, text) == expected
