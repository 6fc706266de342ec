"""Real compiled wheels inside real sandboxes: allow_imports, preload, env.

Behaviour tests use the suite's confinement (strict unless CAPBRIDGE_TEST_CONFINEMENT
says otherwise). Attack tests (a package not allowed must stay unreadable, a template
must stay out of reach) always run strict, with an unconfined control where the control
shows the attack would otherwise work.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import textwrap
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from conftest import CONFINEMENT  # noqa: E402
from escape_util import Verdict, quiet_sandbox, run_attacks  # noqa: E402

import capbridge  # noqa: E402
from capbridge import Limits, SandboxCrashed, SandboxError  # noqa: E402
from sandbox_vm import SandboxConfig, _landlock, _packages, _spawn  # noqa: E402
from sandbox_vm._config import THREAD_ENV  # noqa: E402
from sandbox_vm._forkserver import SERVER_ENV  # noqa: E402

numpy = pytest.importorskip("numpy")
SITE = os.path.dirname(os.path.dirname(os.path.realpath(numpy.__file__)))
strict_only = pytest.mark.skipif(CONFINEMENT != "strict", reason="checks what strict confinement opens")


# -- the packages work inside ----------------------------------------------------------

def test_numpy_computation(sandbox_factory) -> None:
    sb = sandbox_factory(allow_imports=("numpy",))
    sb.exec("import numpy as np\na = np.array([[2.0, 1.0], [1.0, 3.0]])\nx = np.linalg.solve(a, [3.0, 5.0])")
    assert sb.eval("[round(float(v), 6) for v in x]") == [0.8, 1.4]
    assert sb.eval("float((np.ones((64, 64)) @ np.ones((64, 64))).sum())") == 64.0 ** 3


def test_pandas_groupby(sandbox_factory) -> None:
    pytest.importorskip("pandas")
    sb = sandbox_factory(allow_imports=("pandas",))
    sb.exec(textwrap.dedent("""
        import pandas as pd
        df = pd.DataFrame({"team": ["a", "b", "a", "c", "b"], "score": [1, 2, 3, 4, 5]})
        totals = df.groupby("team")["score"].sum().to_dict()
        when = str(pd.Timestamp("2026-01-02", tz="Europe/Paris").tz_convert("UTC"))
    """))
    assert sb.eval("totals") == {"a": 4, "b": 7, "c": 4}
    assert sb.eval("when") == "2026-01-01 23:00:00+00:00"


def test_pydantic_model_validation(sandbox_factory) -> None:
    pytest.importorskip("pydantic")
    sb = sandbox_factory(allow_imports=("pydantic",))
    sb.exec(textwrap.dedent("""
        import pydantic
        class Order(pydantic.BaseModel):
            item: str
            qty: pydantic.PositiveInt
        good = Order.model_validate({"item": "apple", "qty": "3"}).qty
        try:
            Order(item="pear", qty=-1)
        except pydantic.ValidationError as exc:
            bad = exc.errors()[0]["type"]
    """))
    assert sb.eval("good") == 3
    assert sb.eval("bad") == "greater_than"


def test_regex_match(sandbox_factory) -> None:
    pytest.importorskip("regex")
    sb = sandbox_factory(allow_imports=("regex",))
    assert sb.eval("__import__('regex').findall(r'\\p{Lu}\\w+', 'Zürich und Ölten')") == ["Zürich", "Ölten"]


# -- what stays closed -------------------------------------------------------------------

def _sample_file(entry: str) -> str | None:
    """A file inside ``entry`` of site-packages (or the entry itself)."""
    path = os.path.join(SITE, entry)
    if os.path.isfile(path):
        return path
    for root, _dirs, files in os.walk(path):
        if files:
            return os.path.join(root, sorted(files)[0])
    return None


CLOSED = """
for i, (entry, sample) in enumerate(ARGS["entries"]):
    if sample:
        attempt(f"open {entry}", lambda: open(sample, "rb").read(1))
    if os.path.isdir(os.path.join(ARGS["site"], entry)):
        attempt(f"list {entry}", lambda: os.listdir(os.path.join(ARGS["site"], entry)))
attempt("list site-packages", lambda: os.listdir(ARGS["site"]))
attempt("load openblas", lambda: __import__("ctypes").CDLL(ARGS["openblas"]) if ARGS["openblas"] else None)
"""


def _opened(names: tuple[str, ...]) -> set[str]:
    """The top-level entries of site-packages that get a rule (capbridge's own always do)."""
    return {os.path.basename(p) for p in _landlock.rule_paths(names) if os.path.dirname(p) == SITE}


def _closed_entries(allowed: set[str]) -> list[tuple[str, str | None]]:
    """Every top-level entry of site-packages that ``allowed`` does not cover."""
    out = []
    for entry in sorted(os.listdir(SITE)):
        if entry in allowed or entry == "__pycache__" or entry.endswith(".pth"):
            continue
        out.append((entry, _sample_file(entry)))
    return out


def _openblas() -> str | None:
    libs = os.path.join(SITE, "numpy.libs")
    found = sorted(f for f in os.listdir(libs) if "openblas" in f) if os.path.isdir(libs) else []
    return os.path.join(libs, found[0]) if found else None


def test_a_package_not_allowed_stays_unreadable() -> None:
    """Only regex is allowed: numpy, numpy.libs and every other entry stay closed."""
    pytest.importorskip("regex")
    allowed = _opened(("regex",))
    entries = _closed_entries(allowed)
    assert any(e == "numpy" for e, _ in entries) and any(e == "numpy.libs" for e, _ in entries) == bool(_openblas())
    args = {"entries": entries, "site": SITE, "openblas": _openblas()}
    code = CLOSED + textwrap.dedent("""
        attempt("import numpy", lambda: __import__("numpy"))
        attempt("import regex", lambda: __import__("regex").__name__)
    """)
    with capbridge.Sandbox(allow_imports=("regex",), confinement="strict") as sb:
        strict = Verdict(run_attacks(sb, code, args), "strict")
    with quiet_sandbox(allow_imports=("regex",), confinement="none") as sb:
        control = Verdict(run_attacks(sb, code, args), "control")
    for entry, sample in entries:
        if sample:
            strict.denied(f"open {entry}", errno.EACCES)
            assert control[f"open {entry}"]["ok"], control[f"open {entry}"]
        if f"list {entry}" in control.verdict:
            strict.denied(f"list {entry}", errno.EACCES)
    strict.denied("list site-packages", errno.EACCES)
    assert strict["import numpy"]["error"] == "ModuleNotFoundError"
    assert "not in allow_imports" in strict["import numpy"]["message"]
    assert control["import numpy"]["ok"]
    if args["openblas"]:
        assert not strict["load openblas"]["ok"] and control["load openblas"]["ok"]
    assert strict["import regex"]["ok"]


def test_allowing_numpy_opens_nothing_else() -> None:
    access = _packages.resolve(("numpy",))
    allowed = _opened(("numpy",))
    assert allowed - _opened(()) <= {"numpy", "numpy.libs", *(e for e in os.listdir(SITE) if e.startswith("numpy-"))}
    entries = _closed_entries(allowed)
    code = CLOSED + textwrap.dedent("""
        attempt("numpy works", lambda: float(__import__("numpy").ones(3).sum()))
        attempt("loader cache", lambda: open("/etc/ld.so.cache", "rb").read(1))
        attempt("import pandas", lambda: __import__("pandas"))
    """)
    args = {"entries": entries, "site": SITE, "openblas": _openblas()}
    with capbridge.Sandbox(allow_imports=("numpy",), confinement="strict") as sb:
        strict = Verdict(run_attacks(sb, code, args), "strict")
    for entry, sample in entries:
        if sample:
            strict.denied(f"open {entry}", errno.EACCES)
    strict.denied("list site-packages", errno.EACCES)
    assert strict["numpy works"]["value"] == "3.0"
    if args["openblas"]:
        assert strict["load openblas"]["ok"]  # its own vendored library is open
    if not any(e.kind == _packages.LOADER_CACHE for e in access.entries):
        strict.denied("loader cache", errno.EACCES, errno.ENOENT)
    assert strict["import pandas"]["error"] == "ModuleNotFoundError"


def test_allowed_distributions_know_their_version(sandbox_factory) -> None:
    """importlib.metadata finds allowed distributions (packages read their own version)."""
    sb = sandbox_factory(allow_imports=("numpy",))
    sb.exec(textwrap.dedent("""
        import importlib.metadata as md
        version = md.version("numpy")
        try:
            other = md.version("pytest")
        except Exception:
            other = None
    """))
    assert sb.eval("version") == numpy.__version__
    if CONFINEMENT == "strict":
        assert sb.eval("other") is None  # found by name, but its metadata is unreadable


def test_dependencies_are_allowed_with_their_dependent(sandbox_factory) -> None:
    pytest.importorskip("pandas")
    sb = sandbox_factory(allow_imports=("pandas",))
    sb.exec("import numpy, dateutil.parser\nd = str(dateutil.parser.parse('2026-03-04T05:06'))")
    assert sb.eval("d") == "2026-03-04 05:06:00"


# -- names and env are checked before any process starts ------------------------------

def test_bad_arguments_are_refused_before_any_process(monkeypatch) -> None:
    def no_spawn(config):
        raise AssertionError("a process was started for bad arguments")

    monkeypatch.setattr(_spawn, "spawn", no_spawn)
    cases = [
        (dict(allow_imports="numpy"), ValueError, "bare string"),
        (dict(allow_imports=("no_such_pkg_xyz",)), ValueError, "no_such_pkg_xyz"),
        (dict(preload="numpy"), ValueError, "bare string"),
        (dict(preload=("no_such_pkg_xyz",)), ValueError, "no_such_pkg_xyz"),
        (dict(env={"LD_PRELOAD": "/x.so"}), ValueError, "LD_PRELOAD"),
        (dict(env={"N": 1}), TypeError, "must be a str"),
    ]
    for kwargs, error, text in cases:
        with pytest.raises(error, match=text):
            capbridge.Sandbox(**kwargs)


# -- thread pools and env -------------------------------------------------------------------

def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def test_thread_pools_default_to_one_and_env_overrides(sandbox_factory) -> None:
    matmul = "import numpy as np\n_ = np.ones((300, 300)) @ np.ones((300, 300))"
    one = sandbox_factory(allow_imports=("numpy",))
    one.exec(matmul)
    assert one.eval("__import__('os').environ['OPENBLAS_NUM_THREADS']") == "1"
    more = sandbox_factory(allow_imports=("numpy",), env={"OPENBLAS_NUM_THREADS": "3", "OMP_NUM_THREADS": "3"})
    more.exec(matmul)
    assert more.eval("__import__('os').environ['OPENBLAS_NUM_THREADS']") == "3"
    if _openblas():
        assert _threads(more.pid) > _threads(one.pid)


def test_env_never_carries_the_host_environment(sandbox_factory, monkeypatch) -> None:
    monkeypatch.setenv("CAPBRIDGE_TEST_HOST_SECRET", "s3cret")
    for kwargs in ({}, {"preload": ("json",)}):
        sb = sandbox_factory(env={"APP_MODE": "batch"}, **kwargs)
        env = sb.eval("dict(__import__('os').environ)")
        assert env["APP_MODE"] == "batch"
        assert "CAPBRIDGE_TEST_HOST_SECRET" not in env and "s3cret" not in env.values()
        assert set(env) <= {*SERVER_ENV, *THREAD_ENV, "APP_MODE"}, env


# -- start-up failures reach the host -------------------------------------------------------

def test_native_exit_reports_its_stderr(sandbox_factory) -> None:
    sb = sandbox_factory(stderr=lambda text: None)
    with pytest.raises(SandboxCrashed) as info:
        sb.exec("import os\nos.write(2, b'libfoo: cannot go on\\n')\nos._exit(3)")
    assert info.value.exitcode == 3
    assert "libfoo: cannot go on" in str(info.value)


@strict_only
def test_openblas_low_memory_message_reaches_the_host(sandbox_factory) -> None:
    if not _openblas():
        pytest.skip("this numpy does not vendor OpenBLAS")
    sb = sandbox_factory(allow_imports=("numpy",), limits=Limits(memory_mb=128), stderr=lambda text: None)
    with pytest.raises(SandboxCrashed) as info:
        sb.exec("import numpy as np\n_ = np.ones((300, 300)) @ np.ones((300, 300))")
    assert "OpenBLAS" in str(info.value) and "Memory allocation" in str(info.value)


@pytest.fixture
def broken_modules(tmp_path):
    """A private fork server that can import deliberately broken modules from tmp_path."""
    (tmp_path / "cbt_raises.py").write_text("raise RuntimeError('the package says no: missing licence file')\n")
    (tmp_path / "cbt_exits.py").write_text(
        "import os\nos.write(2, b'native init: out of widgets\\n')\nos._exit(3)\n")
    (tmp_path / "cbt_shares.py").write_text("import mmap\nPOOL = mmap.mmap(-1, 4096)\n")
    server = _spawn.ForkServer(paths=(str(tmp_path),))
    yield server
    server.close()


@pytest.mark.parametrize("module, text", [
    ("cbt_raises", "RuntimeError: the package says no: missing licence file"),
    ("cbt_exits", "exited with code 3 while importing; its output ends: native init: out of widgets"),
    ("cbt_shares", "mapped memory shared between processes"),
])
def test_preload_failures_name_the_package_and_its_reason(broken_modules, module, text) -> None:
    config = SandboxConfig(confinement=CONFINEMENT, preload=(module,), allow_imports=(module,))
    with pytest.raises(SandboxError) as info:
        broken_modules.spawn(config)
    assert f"could not preload {module}" in str(info.value) and text in str(info.value)
    with pytest.raises(SandboxError):  # and again: a new template tries, and fails the same way
        broken_modules.spawn(config)
    assert broken_modules.stats()["live"] == 0


# -- preloading ------------------------------------------------------------------------------

def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return int(f.read().rsplit(b")", 1)[1].split()[1])


def test_preloaded_sandbox_starts_with_the_module_imported(sandbox_factory) -> None:
    sb = sandbox_factory(preload=("numpy",))
    assert sb.eval("'numpy' in __import__('sys').modules")
    sb.exec("import numpy as np\ntotal = int(np.arange(10).sum())")
    assert sb.eval("total") == 45


def test_preload_isolation_between_sandboxes_of_one_template(sandbox_factory) -> None:
    first = sandbox_factory(preload=("numpy",))
    first.exec(textwrap.dedent("""
        import numpy, sys
        numpy.capbridge_mark = "left by the first sandbox"
        numpy.pi = 3
        numpy.random.seed(1234)
        del sys.modules["numpy.linalg"]
        draw = float(numpy.random.random())
    """))
    second = sandbox_factory(preload=("numpy",))
    assert _parent(first.pid) == _parent(second.pid)  # forked from the same template
    assert second.eval("hasattr(__import__('numpy'), 'capbridge_mark')") is False
    assert second.eval("__import__('numpy').pi") == pytest.approx(3.141592653589793)
    assert second.eval("'numpy.linalg' in __import__('sys').modules")
    # each sandbox's legacy global RNG is seeded afresh, not copied from the template
    draws = {sandbox_factory(preload=("numpy.random",)).eval("float(__import__('numpy').random.random())")
             for _ in range(3)}
    assert len(draws) == 3


def test_preload_with_a_small_memory_limit(sandbox_factory) -> None:
    sb = sandbox_factory(preload=("numpy",), limits=Limits(memory_mb=128))
    assert sb.eval("int(__import__('numpy').arange(100).sum())") == 4950


def test_preloaded_pandas_imports_lazily_under_confinement(sandbox_factory) -> None:
    pytest.importorskip("pandas")
    sb = sandbox_factory(preload=("pandas",))
    sb.exec("import pandas as pd\nout = pd.DataFrame({'a': [1, 2]}).to_json()\nimport pandas.plotting")
    assert sb.eval("out") == '{"a":{"0":1,"1":2}}'


@strict_only
def test_a_sandbox_cannot_reach_its_template(sandbox_factory) -> None:
    sb = sandbox_factory(preload=("json",))
    template = _parent(sb.pid)
    verdict = Verdict(run_attacks(sb, """
        attempt("kill template", lambda: os.kill(ARGS["template"], signal.SIGKILL))
        attempt("probe template", lambda: os.kill(ARGS["template"], 0))
        attempt("read template memory", lambda: open(f"/proc/{ARGS['template']}/mem", "rb").read(1))
        attempt("parent", lambda: os.getppid())
    """, {"template": template}), "strict")
    verdict.denied("kill template", errno.EPERM, errno.ESRCH)
    verdict.denied("probe template", errno.EPERM, errno.ESRCH)
    verdict.denied("read template memory", errno.EACCES, errno.ENOENT, errno.EPERM)
    assert verdict["parent"]["value"] == "0"  # the template lies outside its PID namespace
    os.kill(template, 0)  # still alive
    assert sandbox_factory(preload=("json",)).eval("1 + 1") == 2


def test_a_crashed_template_is_replaced(sandbox_factory) -> None:
    first = sandbox_factory(preload=("json", "decimal"))
    template = _parent(first.pid)
    os.kill(template, signal.SIGKILL)  # a child of our own fork server
    deadline = time.monotonic() + 10
    while first.alive and time.monotonic() < deadline:
        try:
            first.eval("1")
        except SandboxError:
            break
        time.sleep(0.05)
    with pytest.raises(SandboxError):
        first.eval("1")  # it died with its template
    second = sandbox_factory(preload=("json", "decimal"))
    assert second.eval("__import__('decimal').Decimal('1.5') * 2") == __import__("decimal").Decimal("3.0")
    assert _parent(second.pid) != template


def test_pool_hands_out_preloaded_sandboxes() -> None:
    with capbridge.SandboxPool(2, preload=("numpy",), confinement=CONFINEMENT) as pool:
        for _ in range(3):
            with pool.sandbox() as sb:
                assert sb.eval("'numpy' in __import__('sys').modules")


# -- the command line -------------------------------------------------------------------------

def test_check_prints_what_allow_import_opens(capsys) -> None:
    pytest.importorskip("pandas")
    from capbridge._cli import main

    main(["check", "--allow-import", "pandas"])
    out = capsys.readouterr().out
    assert "pandas" in out and "(asked for)" in out
    assert "numpy" in out and "(required by pandas)" in out and "python-dateutil" in out
    if _openblas():
        assert "vendored libraries" in out and "numpy.libs" in out
    assert "system shared libraries" in out and "libstdc++" in out
    assert main(["check", "--allow-import", "no_such_pkg_xyz"]) == 2
    assert "no_such_pkg_xyz" in capsys.readouterr().err


def test_run_with_preload(tmp_path, capsys) -> None:
    from capbridge._cli import main

    script = tmp_path / "s.py"
    script.write_text("import sys, numpy\nprint('numpy' in sys.modules, int(numpy.arange(4).sum()))\n")
    code = main(["run", "--confinement", CONFINEMENT, "--preload", "numpy", str(script)])
    assert code == 0
    assert "True 6" in capsys.readouterr().out
