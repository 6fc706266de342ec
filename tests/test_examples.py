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


def test_agent_loop():
    out = run_example("agent_loop.py")
    assert "loaded 4 scores" in out and "\n79\n" in out
    assert "RemoteError: TypeError" in out and "\n29\n" in out  # the state survived the error
    assert "CallTimeout:" in out and "lives on" in out
    assert "output cut off at 1 KiB" in out and "line 399" not in out
    assert "SyntaxError" in out
    assert out.rstrip().endswith("4")
    assert "alive=False" not in out


def test_npc_ticks():
    out = run_example("npc_ticks.py")
    assert "looper was removed on tick 30: SandboxTimeout" in out
    assert "looper: moved 90" in out and "removed" in out
    assert "walker: moved" in out and "thinker: moved" in out
    thinker = next(line for line in out.splitlines() if line.startswith("thinker:"))
    assert thinker.endswith("alive") and int(thinker.split("skipped ")[1].split(",")[0]) >= 3
