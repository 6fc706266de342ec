"""The examples run and say what they promise."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run_example(name: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / name), *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_demo():
    out = run_example("demo.py")
    assert "apples counted inside the sandbox: 3" in out
    assert "plugin.restock -> {'pear': 10, 'plum': 10}" in out
    assert "hello from inside the sandbox" in out
    assert "ALLOWED" not in out
    assert out.count("refused") == 4


def test_tenant_scripts():
    out = run_example("tenant_scripts.py")
    for tenant in ("acme", "globex"):
        assert f"{tenant} after revoke: RevokedError" in out
        assert f"{tenant} on the host: runs=2, last_total=4.0" in out
    assert out.count("2 orders, total 4.00") == 4
