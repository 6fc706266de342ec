"""Landlock on its own: which paths get rules, and what the kernel then refuses.

Enforcement runs in a subprocess *without* seccomp, so these failures are Landlock's.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from lockdown_harness import run_attack  # noqa: E402

from sandbox_vm import _landlock  # noqa: E402

ABI = _landlock.abi_version()[0]
needs_landlock = pytest.mark.skipif(
    not ABI, reason=f"Landlock unavailable: {_landlock.unavailable_hint(_landlock.abi_version()[1])}")


def test_stdlib_entries_but_not_site_packages() -> None:
    paths = _landlock.rule_paths(())
    stdlib = _landlock.stdlib_dir()
    assert os.path.join(stdlib, "json") in paths and os.path.join(stdlib, "os.py") in paths
    assert stdlib not in paths
    assert not [p for p in paths if os.path.basename(p) in ("site-packages", "dist-packages")]
    assert any(p.endswith("lib-dynload") for p in paths)


def test_bridge_and_allowed_packages() -> None:
    import cloudpickle
    import pluggy
    import pytest_timeout

    base = _landlock.rule_paths(())
    assert os.path.dirname(cloudpickle.__file__) in base
    assert os.path.dirname(pluggy.__file__) not in base
    allowed = _landlock.rule_paths(("pluggy.something", "pytest_timeout", "no_such_module_xyz"))
    assert os.path.dirname(pluggy.__file__) in allowed
    assert pytest_timeout.__file__ in allowed  # a single-module package is a file rule


def test_extension_module_libraries_are_found() -> None:
    import _ctypes

    from sandbox_vm import _elf

    assert any(name.startswith("libffi") for name in _elf.read_elf(_ctypes.__file__).needed)
    assert any(os.path.basename(p).startswith("libffi") for p in _landlock.base_paths())


def test_handled_rights_follow_the_abi() -> None:
    assert _landlock.handled_rights(1) == (_landlock.FS_ABI1, 0, 0)
    fs3, _, _ = _landlock.handled_rights(3)
    assert fs3 & _landlock.FS_REFER and fs3 & _landlock.FS_TRUNCATE and not fs3 & _landlock.FS_IOCTL_DEV
    fs, net, scoped = _landlock.handled_rights(6)
    assert fs & _landlock.FS_IOCTL_DEV and net == 3 and scoped == 3


def test_hints_name_the_fix() -> None:
    assert "CONFIG_SECURITY_LANDLOCK" in _landlock.unavailable_hint(errno.ENOSYS)
    assert "lsm=" in _landlock.unavailable_hint(errno.EOPNOTSUPP)


@needs_landlock
def test_prepare_is_cached_per_allow_imports() -> None:
    try:
        first = _landlock.prepare(("pluggy",))
        assert _landlock.prepare(("pluggy.hooks",)) is first
        assert _landlock.cached(("pluggy",)) is first
        assert _landlock.prepare(()) is not first
    finally:
        _landlock.discard_cache()
    assert _landlock.cached(("pluggy",)) is None


ENFORCE = '''
from sandbox_vm import _landlock
ruleset = _landlock.prepare(tuple(ARGS["allow"]))
_landlock.enforce(ruleset)
_landlock.install_import_guard()
attempt("read_stdlib", lambda: len(open(os.__file__).read()))
attempt("read_passwd", lambda: open("/etc/passwd").read())
attempt("read_venv_file", lambda: open(ARGS["other_file"]).read())
attempt("write_tmp", lambda: open(ARGS["tmp_file"], "w"))
attempt("mkdir_tmp", lambda: os.mkdir(ARGS["tmp_file"] + ".d"))
attempt("list_stdlib_subdir", lambda: os.listdir(os.path.dirname(json_file)))
attempt("dev_null", lambda: open("/dev/null", "wb"))
attempt("tcp_bind", lambda: __import__("socket").socket().bind(("127.0.0.1", 0)))
def abstract():
    s = __import__("socket").socket(__import__("socket").AF_UNIX)
    s.connect("\\0" + ARGS["abstract"])
attempt("abstract_unix", abstract)
attempt("signal_dummy", lambda: os.kill(ARGS["dummy"], 0))
attempt("import_allowed", lambda: __import__("pluggy").__name__)
attempt("import_denied", lambda: __import__("pytest"))
attempt("import_sqlite3", lambda: __import__("sqlite3").sqlite_version)
'''


@needs_landlock
def test_enforced_ruleset_denies_everything_else(tmp_path) -> None:
    import pluggy

    dummy = subprocess.Popen(["sleep", "30"])
    listener = socket.socket(socket.AF_UNIX)
    abstract = f"capbridge-landlock-test-{os.getpid()}"
    listener.bind("\0" + abstract)
    listener.listen()
    try:
        args = {"allow": ["pluggy"], "tmp_file": str(tmp_path / "w"), "abstract": abstract, "dummy": dummy.pid,
                "other_file": os.path.join(os.path.dirname(pytest.__file__), "__init__.py")}
        result = run_attack("json_file = __import__('json').__file__\n" + ENFORCE, config={}, lock=False, args=args)
        assert dummy.poll() is None
    finally:
        dummy.send_signal(signal.SIGKILL)
        dummy.wait(5)
        listener.close()
    for name in ("read_stdlib", "list_stdlib_subdir", "import_allowed", "import_sqlite3"):
        result.allowed(name)
    for name in ("read_passwd", "read_venv_file", "write_tmp", "mkdir_tmp", "dev_null"):
        result.denied(name, errno.EACCES)
    assert not os.path.exists(tmp_path / "w")
    assert result["import_denied"]["error"] == "ModuleNotFoundError"
    assert pluggy.__name__ == "pluggy"
    if ABI >= 4:
        result.denied("tcp_bind", errno.EACCES)
    if ABI >= 6:
        result.denied("abstract_unix", errno.EPERM)
        result.denied("signal_dummy", errno.EPERM)
