"""Run attack code in a separate, locked-down Python process and collect a verdict.

The pytest process itself is never locked down nor forked: every attack runs in
``python -I -c CODE`` with a timeout. Inside, ``attempt(name, fn)`` records what
happened and ``raw(nr, *args)`` makes a raw syscall returning ``(rc, errno)``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

PRELUDE = '''
import ctypes, errno, json, os, sys
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
VERDICT = {}

def attempt(name, fn):
    try:
        value = fn()
    except BaseException as exc:
        VERDICT[name] = {"ok": False, "error": type(exc).__name__,
                         "errno": getattr(exc, "errno", None), "message": str(exc)[:200]}
    else:
        VERDICT[name] = {"ok": True, "value": repr(value)[:200]}

def raw(nr, *args):
    ctypes.set_errno(0)
    rc = _libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) if isinstance(a, int) else a for a in args])
    return rc, ctypes.get_errno()

ARGS = json.loads(sys.argv[1])
from sandbox_vm._config import SandboxConfig
from sandbox_vm._lockdown import LockdownFailed, lock_down
'''

LOCK = '''
try:
    REPORT = lock_down(SandboxConfig(**ARGS["config"]), keep_fds=(0, 1, 2))
    VERDICT["_report"] = {"missing": REPORT.missing(), "text": str(REPORT)}
except LockdownFailed as failure:
    VERDICT["_failed"] = {"step": failure.step, "errno": failure.errno, "hint": failure.hint}
'''

EPILOGUE = '''
sys.stdout.write("\\nVERDICT " + json.dumps(VERDICT) + "\\n")
sys.stdout.flush()
'''


class Result:
    def __init__(self, proc: subprocess.CompletedProcess) -> None:
        self.returncode = proc.returncode
        self.stdout, self.stderr = proc.stdout, proc.stderr
        line = next((l for l in reversed(proc.stdout.splitlines()) if l.startswith("VERDICT ")), None)
        self.verdict: dict = json.loads(line[8:]) if line else {}

    def __getitem__(self, name: str) -> dict:
        assert name in self.verdict, f"attack {name!r} never ran: rc={self.returncode}\n{self.stderr[-3000:]}"
        return self.verdict[name]

    def denied(self, name: str, *errnos: int) -> dict:
        """Assert the attack ran and the kernel refused it with one of ``errnos``."""
        outcome = self[name]
        assert not outcome["ok"], f"{name} succeeded: {outcome}"
        assert outcome["errno"] in errnos, f"{name} failed the wrong way: {outcome}"
        return outcome

    def allowed(self, name: str) -> dict:
        outcome = self[name]
        assert outcome["ok"], f"{name} failed: {outcome}"
        return outcome


def run_attack(code: str, *, config: dict, args: dict | None = None, lock: bool = True,
               timeout: float = 20, pre: str = "") -> Result:
    """Run ``code`` after ``pre`` and (if ``lock``) ``lock_down(SandboxConfig(**config))``."""
    source = PRELUDE + textwrap.dedent(pre) + (LOCK if lock else "") + textwrap.dedent(code) + EPILOGUE
    payload = json.dumps({"config": config, **(args or {})})
    proc = subprocess.run([sys.executable, "-I", "-c", source, payload], capture_output=True, text=True,
                          timeout=timeout, cwd="/", env={"MALLOC_ARENA_MAX": "2"})
    return Result(proc)
