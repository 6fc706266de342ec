"""``capbridge`` on the command line, end to end through ``python -m capbridge``."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys

import pytest
from conftest import CONFINEMENT

ROOT = pathlib.Path(__file__).resolve().parent.parent


def cli(*args: str, stdin: str | None = None, confinement: bool = True,
        cwd: pathlib.Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "capbridge", *args]
    if confinement and args and args[0] in ("run", "shell"):
        argv.insert(4, f"--confinement={CONFINEMENT}")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(argv, input=stdin if stdin is not None else "", capture_output=True, text=True,
                          check=False, timeout=timeout, cwd=cwd or ROOT, env=env)


def script(tmp_path: pathlib.Path, text: str, name: str = "script.py") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


# ---------------------------------------------------------------------- run


def test_ro_mount_reads_and_outside_is_refused(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "in.txt").write_text("inside\n")
    src = script(tmp_path, (
        "import os, sys\n"
        "print(open('/data/in.txt').read().strip(), open('in.txt').read().strip(), os.getcwd())\n"
        "print(sys.argv[1:], __name__)\n"
        "open('/etc/passwd')\n"
    ))
    proc = cli("run", src, "one", "--ro", f"{data}:/data", "two")
    assert proc.stdout.splitlines() == ["inside inside /data", "['one', 'two'] __main__"]
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr
    assert last_line(proc.stderr).startswith("PermissionError: [Errno 13] Permission denied")
    assert "'/etc/passwd'" in proc.stderr and "--ro/--rw" in proc.stderr


def test_ro_mount_refuses_writes(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    src = script(tmp_path, "open('/data/new.txt', 'w')\n")
    proc = cli("run", "--ro", f"{data}:/data", src)
    assert proc.returncode == 1
    assert last_line(proc.stderr).startswith("PermissionError")
    assert not (data / "new.txt").exists()


def test_rw_mount_writes_to_the_host(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    src = script(tmp_path, "import pathlib\npathlib.Path('/out/result.txt').write_text('from the sandbox')\n")
    proc = cli("run", src, "--rw", f"{out}:/out")
    assert proc.returncode == 0, proc.stderr
    assert (out / "result.txt").read_text() == "from the sandbox"


def test_without_mounts_files_are_denied(tmp_path):
    proc = cli("run", "-", stdin="open('/etc/passwd')\n")
    assert proc.returncode == 1
    assert last_line(proc.stderr).startswith("PermissionError")


def test_script_exit_codes(tmp_path):
    src = script(tmp_path, "import sys\nprint('out')\nsys.exit(3)\n")
    proc = cli("run", src)
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "out\n", "")
    proc = cli("run", "-", stdin="raise SystemExit('bye')\n")
    assert (proc.returncode, proc.stderr) == (1, "bye\n")
    proc = cli("run", "-", stdin="exit(0)\nprint('not reached')\n")
    assert (proc.returncode, proc.stdout) == (0, "")


def test_timeout(tmp_path):
    src = script(tmp_path, "print('started', flush=True)\nwhile True:\n    pass\n")
    proc = cli("run", "--timeout", "1", src)
    assert proc.returncode == 124
    assert proc.stdout == "started\n"
    assert proc.stderr.startswith("capbridge: timed out")
    assert "--timeout 1 s" in proc.stderr and len(proc.stderr.splitlines()) == 1


def test_memory_limit(tmp_path):
    src = script(tmp_path, "chunks = []\nwhile True:\n    chunks.append(bytearray(8 * 1024 * 1024))\n")
    proc = cli("run", "--memory", "128", src)
    assert proc.returncode == 125, proc.stderr
    assert proc.stderr.startswith("capbridge: out of memory") and "--memory 128 MB" in proc.stderr


def test_cpu_limit(tmp_path):
    proc = cli("run", "--cpu", "1", "--timeout", "20", "-", stdin="while True:\n    pass\n")
    assert proc.returncode == 126, proc.stderr
    assert proc.stderr.startswith("capbridge: CPU limit")


def test_uncaught_exception_shows_the_sandbox_traceback(tmp_path):
    src = script(tmp_path, "def inner():\n    raise ValueError('boom')\n\ninner()\n", name="fails.py")
    proc = cli("run", src)
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert f'File "{src}", line 4, in <module>' in proc.stderr
    assert "raise ValueError('boom')" in proc.stderr  # source lines are shown
    assert lines[-1] == "ValueError: boom"
    assert "_cli" not in proc.stderr  # capbridge's own frames are not


def test_ctrl_c_interrupts_the_script(tmp_path):
    src = script(tmp_path, "print('started', flush=True)\nwhile True:\n    pass\n")
    argv = [sys.executable, "-m", "capbridge", "run", f"--confinement={CONFINEMENT}", src]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout.readline() == "started\n"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert last_line(err) == "KeyboardInterrupt" and f'File "{src}", line ' in err


def _children(pid: int) -> list[str]:
    try:
        return pathlib.Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []


def test_ctrl_c_while_the_sandbox_starts_exits_130_without_a_traceback(tmp_path):
    """Once the command has started its first process, a Ctrl-C at any point of the
    start-up ends it with 130 and one line, never a traceback of capbridge's code."""
    import time

    src = script(tmp_path, "print('started', flush=True)\nwhile True:\n    pass\n")
    argv = [sys.executable, "-m", "capbridge", "run", f"--confinement={CONFINEMENT}", src]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 60
        while not _children(proc.pid) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.005)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "capbridge/" not in err and "sandbox_vm" not in err, err
    if "started" not in out:
        assert err.strip() == "capbridge: interrupted; the sandbox was killed"


def test_a_second_ctrl_c_gives_up_on_a_script_that_ignores_the_first(tmp_path):
    src = script(tmp_path, "while True:\n"
                           "    try:\n"
                           "        print('started', flush=True)\n"
                           "        while True:\n"
                           "            pass\n"
                           "    except KeyboardInterrupt:\n"
                           "        print('ignored', flush=True)\n")
    argv = [sys.executable, "-m", "capbridge", "run", f"--confinement={CONFINEMENT}", src]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout.readline() == "started\n"
        proc.send_signal(signal.SIGINT)
        assert proc.stdout.readline() == "ignored\n"
        assert proc.stdout.readline() == "started\n"  # caught, and back in the loop
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert err.strip() == "capbridge: interrupted; the sandbox was killed"


def test_a_tampered_runner_is_not_trusted():
    proc = cli("run", "-", stdin=(
        "import capbridge._cli as c\n"
        "c._sandbox_run.__code__ = (lambda *a: ('exit', '3', None)).__code__\n"
    ))
    assert proc.returncode == 0  # the script's own run was already under way
    proc = cli("shell", stdin=(
        "import capbridge._cli as c\n"
        "c._sandbox_run.__code__ = (lambda *a: ('exit', '3', None)).__code__\n"
        "1\n"
    ))
    assert proc.returncode == 70
    assert proc.stderr.startswith("capbridge: the sandbox returned a malformed result")


def test_syntax_error(tmp_path):
    proc = cli("run", "-", stdin="x = (\n")
    assert proc.returncode == 1
    assert last_line(proc.stderr).startswith("SyntaxError")


@pytest.mark.parametrize("args, message", [
    (["--ro", "/no/such/dir:/data"], "no such directory on this machine: '/no/such/dir'"),
    (["--ro", "{tmp}:data"], "must be absolute"),
    (["--rw", "{tmp}"], "expected HOST_DIR:VIRTUAL_DIR"),
    (["--ro", "{tmp}:/a/../.."], "may not contain '..'"),
    (["--ro", "{tmp}:/x", "--rw", "{tmp}:/x"], "/x is already mapped"),
    (["--cwd", "/x"], "--cwd needs a file system"),
])
def test_bad_mappings_are_one_line_usage_errors(tmp_path, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    proc = cli("run", *args, "-", stdin="print('ran')\n")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("capbridge: ")
    assert message in proc.stderr


def test_missing_script():
    proc = cli("run", "/no/such/script.py")
    assert proc.returncode == 2
    assert proc.stderr == "capbridge: cannot read script '/no/such/script.py': No such file or directory\n"


def test_script_inside_a_mount_is_named_by_its_virtual_path(tmp_path):
    (tmp_path / "s.py").write_text("import sys\nprint(__file__, sys.argv[0])\n")
    proc = cli("run", "--ro", f"{tmp_path}:/app", str(tmp_path / "s.py"))
    assert proc.stdout == "/app/s.py /app/s.py\n", proc.stderr


def test_example_script(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    proc = cli("run", "examples/cli_script.py", "--ro", "examples/cli_data:/data", "--rw", f"{out}:/out")
    assert proc.returncode == 0, proc.stderr
    assert "3 scores, mean 85.7, best ada (91)" in proc.stdout
    assert "Permission denied" in proc.stdout
    assert (out / "summary.txt").read_text() == "mean=85.7 best=ada\n"


# ---------------------------------------------------------------------- shell


def test_shell_with_piped_stdin(tmp_path):
    (tmp_path / "f.txt").write_text("hi")
    stdin = ("x = 6*7\nx\n"
             "def f(n):\n    return n + 1\n\nf(x)\n"
             "1/0\n"
             "print('still here', x)\n"
             "import os; os.listdir('.')\n")
    proc = cli("shell", "--ro", f"{tmp_path}:/t", stdin=stdin)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["42", "43", "still here 42", "['f.txt']"]
    assert "ZeroDivisionError: division by zero" in proc.stderr
    assert ">>>" not in proc.stdout + proc.stderr  # no prompts when stdin is not a terminal


def test_shell_exit_code_and_timeout():
    proc = cli("shell", stdin="exit(5)\nprint('not reached')\n")
    assert (proc.returncode, proc.stdout) == (5, "")
    proc = cli("shell", "--timeout", "1", stdin="while True: pass\n")
    assert proc.returncode == 124
    assert proc.stderr.startswith("capbridge: timed out: a statement")


# ---------------------------------------------------------------------- check and help


def test_check_prints_the_layers():
    proc = cli("check")
    assert "landlock" in proc.stdout and "seccomp" in proc.stdout and "rlimits" in proc.stdout
    assert "strict confinement:" in proc.stdout
    assert proc.returncode == (0 if "strict confinement: available" in proc.stdout else 1)


@pytest.mark.parametrize("command, expected", [
    ([], ["run", "shell", "check", "124"]),
    (["run"], ["--ro HOST_DIR:VIRTUAL_DIR", "--rw", "--memory", "--cpu", "--timeout", "--allow-import",
               "--confinement", "exit codes", "124", "125", "126"]),
    (["shell"], ["interactive", "--ro", "Ctrl-D"]),
    (["check"], ["strict", "exit codes"]),
])
def test_help(command, expected):
    proc = cli(*command, "--help", confinement=False)
    assert proc.returncode == 0
    assert proc.stdout.startswith("usage: capbridge")
    for word in expected:
        assert word in proc.stdout


def test_usage_errors():
    proc = cli("run", "--memory", "lots", "-", confinement=False)
    assert proc.returncode == 2
    assert "--memory: expected a positive number or 'none'" in proc.stderr
    proc = cli(confinement=False)
    assert proc.returncode == 2 and "COMMAND" in proc.stderr
