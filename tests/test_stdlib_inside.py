"""The standard library runs as usual inside a strict sandbox: CPython's own tests."""

import pytest

from conftest import CONFINEMENT, make_sandbox
from capbridge import Limits

RUN = """(lambda res: (res.testsRun, len(res.failures), len(res.errors)))(
    __import__("unittest").TextTestRunner(verbosity=0).run(
        __import__("unittest").defaultTestLoader.loadTestsFromName({name!r})))"""


@pytest.fixture(scope="module")
def sb():
    box = make_sandbox(stdout=lambda s: None, stderr=lambda s: None,
                       limits=Limits(memory_mb=1024, cpu_seconds=120, wall_seconds=120))
    yield box
    box.close()


@pytest.mark.parametrize("name", ["test.test_string", "test.test_collections", "test.test_dataclasses",
                                  "test.test_math", "test.test_fractions", "test.test_bisect"])
def test_cpython_test_module_passes(sb, name):
    ran, failures, errors = sb.eval(RUN.format(name=name))
    assert ran > 20
    assert (failures, errors) == (0, 0)


def test_fresh_import_system_finds_the_stdlib(sb):
    # Importers that list directories anew (after invalidate_caches, or in a
    # subinterpreter) must still see the standard library.
    assert sb.eval("__import__('importlib').invalidate_caches() or __import__('wave').__name__") == "wave"
    assert sb.eval("__import__('test.support', fromlist=['x']).run_in_subinterp('import json')") == 0


@pytest.mark.skipif(CONFINEMENT != "strict", reason="Landlock is what hides installed packages")
def test_installed_packages_stay_unreadable(sb):
    with pytest.raises(Exception, match="No module named 'pytest'"):
        sb.eval("__import__('pytest')")
