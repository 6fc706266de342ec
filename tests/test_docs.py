"""The documentation builds without warnings and covers the public API."""

from __future__ import annotations

import pathlib
import re

import pytest
from conftest import CONFINEMENT

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

sphinx_build = pytest.importorskip("sphinx.cmd.build", reason="sphinx is not installed (pip install -e '.[test]')")


PAGES = ("index", "quickstart", "threat-model", "capabilities", "host-apis", "confinement",
         "cli", "api", "protocol", "performance", "deploying", "faq", "development",
         "jobs/plugin-host", "jobs/game-scripting", "jobs/agent-tools", "jobs/tenant-server")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The documentation built once with -W: ``(html directory, doctree directory, exit code)``."""
    root = tmp_path_factory.mktemp("docs")
    out, doctrees = root / "html", root / "doctrees"
    rc = sphinx_build.build_main(
        ["-W", "--keep-going", "-q", "-b", "html", "-d", str(doctrees), str(DOCS), str(out)]
    )
    return out, doctrees, rc


def test_docs_build_without_warnings(built):
    out, _, rc = built
    assert rc == 0, "sphinx-build -W failed; run `sphinx-build -W -b html docs docs/_build/html` to see why"
    for page in PAGES:
        assert (out / f"{page}.html").exists(), page


def _api_objects(doctrees: pathlib.Path):
    """``(full name, [parameter names], {described name: description})`` per documented callable."""
    import pickle

    from docutils import nodes
    from sphinx import addnodes

    for path in sorted(doctrees.glob("*.doctree")):
        tree = pickle.loads(path.read_bytes())
        for desc in tree.findall(addnodes.desc):
            if desc.get("objtype") not in ("class", "exception", "function", "method"):
                continue
            sig = next(iter(desc.findall(addnodes.desc_signature)))
            name = f"{sig.get('module')}.{sig.get('fullname')}"
            params = []
            for param in sig.findall(addnodes.desc_parameter):
                ident = next(iter(param.findall(addnodes.desc_sig_name)), None)
                params.append((ident.astext() if ident is not None else param.astext()).lstrip("*"))
            described = {}
            content = next(iter(desc.findall(addnodes.desc_content)))
            for field in content.findall(nodes.field):
                if field[0].astext().startswith(("Parameters", "Keyword")):
                    for para in field[1].findall(nodes.paragraph):
                        key = next(iter(para.findall(nodes.strong)), None)
                        if key is not None:
                            described[key.astext().lstrip("*")] = para.astext().partition("\u2013")[2].strip()
            yield name, [p for p in params if p not in ("", "/", "self")], described


def test_every_public_parameter_is_described(built):
    _, doctrees, _ = built
    objects = list(_api_objects(doctrees))
    assert any(name == "capbridge.Sandbox" for name, _, _ in objects)
    missing = [f"{name}({p})" for name, params, described in objects for p in params if not described.get(p)]
    assert not missing, ("parameters without a description (add a `:param name:` to the docstring, or "
                         f"an entry to docs/_ext/capbridge_params.py): {missing}")


def test_no_private_names_in_signatures(built):
    _, doctrees, _ = built
    private = [f"{name}({p})" for name, params, _ in _api_objects(doctrees) for p in params if p.startswith("_")]
    assert not private
    html = (built[0] / "api.html").read_text()
    assert "_awaiter" not in html


def test_api_reference_names_every_public_name():
    import capbridge
    import host_apis

    api = (DOCS / "api.rst").read_text()
    missing = [f"capbridge.{n}" for n in capbridge.__all__ if not re.search(rf"\b{re.escape(n)}\b", api)]
    missing += [f"host_apis.{n}" for n in host_apis.__all__ if not re.search(rf"\b{re.escape(n)}\b", api)]
    assert not missing, f"not in docs/api.rst: {missing}"


def _spec_error_classes() -> list[str]:
    spec = ROOT.parent / "shared" / "SPEC.md"
    if spec.exists():
        text = spec.read_text()
        section = text.split("### Errors", 1)[1].split("\n## ", 1)[0]
        return re.findall(r"^\| `(\w+)`", section, flags=re.M)
    import capbridge

    return [n for n in capbridge.__all__ if n.endswith(("Error", "Exceeded", "Timeout", "Crashed", "Unavailable"))]


def test_every_error_class_is_documented():
    import capbridge

    names = _spec_error_classes()
    assert "CapbridgeError" in names
    api = (DOCS / "api.rst").read_text()
    table = api.split(".. _errors-table:", 1)[1]
    for name in names:
        assert hasattr(capbridge, name), name
        assert f":class:`{name}`" in table, f"{name} missing from the errors table"
        assert f".. autoexception:: capbridge.{name}" in api, f"{name} has no autoexception entry"


def test_readme_commands_appear_in_the_docs():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```bash\n(.*?)\n```", readme, flags=re.S)
    assert len(commands) >= 2
    docs = (DOCS / "index.rst").read_text() + (DOCS / "quickstart.rst").read_text()
    for cmd in commands[:2]:
        assert cmd.strip() in docs, f"README command not in docs/index.rst or quickstart.rst: {cmd}"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    test_command = re.findall(r"```bash\n(.*?)\n```", readme, flags=re.S)[1].strip()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci, "the last line of .ci/run must be the README's test command"


def _python_blocks(page: str) -> list[str]:
    """The ``.. code-block:: python`` blocks of a page, dedented."""
    import textwrap

    blocks = []
    lines = (DOCS / page).read_text().splitlines()
    for i, line in enumerate(lines):
        if line.strip() == ".. code-block:: python":
            indent = len(line) - len(line.lstrip())
            body = []
            for follow in lines[i + 1:]:
                if follow.strip() and len(follow) - len(follow.lstrip()) <= indent:
                    break
                body.append(follow)
            blocks.append(textwrap.dedent("\n".join(body)).strip() + "\n")
    return blocks


@pytest.mark.skipif(CONFINEMENT != "strict", reason="the tutorial's snippets use the default, strict confinement")
@pytest.mark.parametrize("index", range(len(_python_blocks("quickstart.rst"))))
def test_tutorial_snippets_run_as_written(index, tmp_path):
    import os
    import subprocess
    import sys

    source = _python_blocks("quickstart.rst")[index]
    script = tmp_path / "snippet.py"
    script.write_text(source)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, f"docs/quickstart.rst snippet {index} failed:\n{source}\n{proc.stderr}"
