"""``capbridge run/shell --grant NAME=module:factory``: application objects on the command line."""

from __future__ import annotations

import textwrap

import pytest
from test_cli import cli, last_line

APP = textwrap.dedent('''
    from capbridge import expose

    made = []

    class Inventory:
        """Counts things."""

        def __init__(self):
            self.items = {}

        @expose
        def add(self, name: str, qty: int = 1) -> None:
            self.items[name] = self.items.get(name, 0) + qty

        @expose
        def count(self, name: str) -> int:
            return self.items.get(name, 0)

    def make_inventory():
        made.append(1)
        return Inventory()

    def broken():
        raise ValueError("no database configured")

    def secret():
        return object()

    def prices():
        return {"apple": 3}

    NOT_CALLABLE = 3

    class Factories:
        @staticmethod
        def shop():
            return Inventory()
''')


@pytest.fixture
def app(tmp_path):
    (tmp_path / "shop.py").write_text(APP)
    (tmp_path / "use.py").write_text("inventory.add('apple', 2)\nprint(inventory.count('apple'), prices)\n")
    return tmp_path


def test_factory_result_is_granted(app):
    proc = cli("run", "--grant", "inventory=shop:make_inventory", "--grant", "prices=shop:prices", "use.py", cwd=app)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "2 {'apple': 3}\n"


def test_dotted_factory_and_shell(app):
    proc = cli("shell", "--grant", "inventory=shop:Factories.shop", cwd=app,
               stdin="inventory.add('pear')\ninventory.count('pear')\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "1\n"


def test_grant_option_after_the_script(app):
    proc = cli("run", "use.py", "--grant", "inventory=shop:make_inventory", "--grant=prices=shop:prices", cwd=app)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("2 ")


@pytest.mark.parametrize("spec, message", [
    ("inventory", "expected NAME=module:factory, e.g. --grant inventory=myapp.api:make_inventory"),
    ("inventory=shop", "expected NAME=module:factory"),
    ("=shop:make_inventory", "expected NAME=module:factory"),
    ("1x=shop:make_inventory", "the name must be a Python identifier, not '1x'"),
    ("class=shop:make_inventory", "the name must be a Python identifier, not 'class'"),
    ("inventory=shop/x:make", "the module must be a dotted Python name"),
    ("inventory=nowhere:make", "no module named 'nowhere' in the current directory"),
    ("inventory=shop:nope", "shop has no attribute 'nope'"),
    ("inventory=shop:NOT_CALLABLE", "shop:NOT_CALLABLE is not callable (its type is int)"),
    ("inventory=shop:broken", "shop:broken() raised ValueError: no database configured"),
    ("inventory=shop:secret", "--grant inventory=...: what the factory returned (object) cannot be granted"),
])
def test_bad_grants_are_one_line_usage_errors(app, spec, message):
    proc = cli("run", "--grant", spec, "use.py", cwd=app)
    assert proc.returncode == 2, proc.stderr
    assert last_line(proc.stderr).startswith("capbridge: --grant ")
    assert message in last_line(proc.stderr)
    assert proc.stdout == ""


def test_a_failing_factory_shows_its_own_traceback(app):
    proc = cli("run", "--grant", "inventory=shop:broken", "use.py", cwd=app)
    assert 'shop.py", line ' in proc.stderr and "raise ValueError" in proc.stderr
    assert "_cli.py" not in proc.stderr and "importlib" not in proc.stderr


def test_a_module_whose_own_import_fails(app):
    (app / "needs.py").write_text("import not_installed_anywhere\n")
    proc = cli("run", "--grant", "x=needs:make", "use.py", cwd=app)
    assert proc.returncode == 2
    assert "importing needs failed: ModuleNotFoundError: No module named 'not_installed_anywhere'" in proc.stderr
    assert 'needs.py", line 1' in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["--grant", "a=shop:prices", "--grant", "a=shop:prices"], "'a' is granted twice"),
    (["--ro", ".:/d", "--grant", "fs=shop:prices"], "'fs' is the file system of --ro/--rw"),
])
def test_conflicting_grants(app, args, message):
    proc = cli("run", *args, "use.py", cwd=app)
    assert proc.returncode == 2 and message in proc.stderr


def test_the_sandbox_cannot_reach_the_factory_module(app):
    """The factory's module lives on the host: the sandbox gets the result, not the module."""
    (app / "peek.py").write_text(
        "import sys\n"
        "print('shop' in sys.modules)\n"
        "try:\n"
        "    import shop\n"
        "except ImportError as e:\n"
        "    print('ImportError')\n"
        "print(hasattr(inventory, 'items'), type(inventory).__module__)\n"
    )
    proc = cli("run", "--grant", "inventory=shop:make_inventory", "peek.py", cwd=app)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "ImportError", "False", "capbridge.proxy"]
