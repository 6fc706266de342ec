"""Helpers for tests/test_escape.py: run attack code as sandbox code and read verdicts.

Attack code runs through the real front door (``Sandbox.exec``). Inside, the
prelude defines ``attempt(name, fn)`` (records the value or the exception),
``raw(name, *args)`` (a raw syscall by name, numbers from ``sandbox_vm._policy``
for this CPU; returns ``(rc, errno)``) and ``ARGS`` (host-side facts: pids, ports,
paths). ``VERDICT`` is read back with ``Sandbox.eval``: plain dicts of str/int/bool.
"""

from __future__ import annotations

import errno
import os
import textwrap
import time
import warnings

import capbridge
from sandbox_vm import _policy, _spawn

ARCH = _policy.current_arch()
NR = dict(_policy.SYSCALLS.get(ARCH, {}))

PRELUDE = '''
import ctypes as _ct, errno, os, signal, socket, sys, time
_libc = _ct.CDLL(None, use_errno=True)
_libc.syscall.restype = _ct.c_long
VERDICT = {}

def attempt(name, fn):
    try:
        value = fn()
    except BaseException as exc:
        VERDICT[name] = {"ok": False, "error": type(exc).__name__,
                         "errno": getattr(exc, "errno", None), "message": str(exc)[:300]}
    else:
        VERDICT[name] = {"ok": True, "value": repr(value)[:300], "errno": None}
    return VERDICT[name]

def raw(name, *args):
    nr = NR[name]
    _ct.set_errno(0)
    rc = _libc.syscall(_ct.c_long(nr), *[_ct.c_long(a) if isinstance(a, int) else a for a in args])
    return rc, (_ct.get_errno() if rc < 0 else 0)

def raw_attempt(name, syscall, *args, after=None):
    rc, err = raw(syscall, *args)
    if rc == 0 and syscall in ("clone", "clone3"):
        os._exit(0)  # a child that should never have existed
    VERDICT[name] = {"ok": rc >= 0, "errno": err if rc < 0 else None, "value": rc}
    if rc >= 0 and after is not None:
        after(rc)
    return VERDICT[name]
'''


def quiet_sandbox(*args, **kwargs) -> capbridge.Sandbox:
    """``Sandbox(...)`` without the RuntimeWarning of ``confinement='none'``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return capbridge.Sandbox(*args, **kwargs)


def run_attacks(sb: capbridge.Sandbox, code: str, args: dict | None = None) -> dict:
    """Run ``code`` (after the prelude) in ``sb``; return its ``VERDICT``."""
    setup = f"NR = {NR!r}\nARGS = {dict(args or {})!r}\n"
    sb.exec(setup + PRELUDE + textwrap.dedent(code), filename="<attack>")
    return sb.eval("VERDICT")


class Verdict:
    """Assertions over one ``VERDICT`` dict."""

    def __init__(self, verdict: dict, label: str) -> None:
        self.verdict, self.label = verdict, label

    def __getitem__(self, name: str) -> dict:
        assert name in self.verdict, f"[{self.label}] attack {name!r} never ran; ran: {sorted(self.verdict)}"
        return self.verdict[name]

    def __contains__(self, name: str) -> bool:
        return name in self.verdict

    def denied(self, name: str, *errnos: int, error: str | None = None) -> dict:
        outcome = self[name]
        assert not outcome["ok"], f"[{self.label}] {name} SUCCEEDED: {outcome}"
        if errnos:
            assert outcome["errno"] in errnos, f"[{self.label}] {name} failed the wrong way: {outcome}"
        if error is not None:
            assert outcome["error"] == error, f"[{self.label}] {name} failed the wrong way: {outcome}"
        return outcome

    def allowed(self, name: str) -> dict:
        outcome = self[name]
        assert outcome["ok"], f"[{self.label}] {name} failed: {outcome}"
        return outcome


DENIED = (errno.EPERM, errno.EACCES)


# --- host-side observations ---------------------------------------------------------------

def proc_stat(pid: int) -> tuple[str, int] | None:
    """``(state, ppid)`` of ``pid`` from the host's /proc, or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return fields[0].decode(), int(fields[1])


def children_of(ppid: int) -> dict[int, str]:
    """``{pid: state}`` of every process whose parent is ``ppid``."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = proc_stat(int(entry))
            if st is not None and st[1] == ppid:
                out[int(entry)] = st[0]
    return out


def zombies_of(ppid: int, grace: float = 3.0) -> dict[int, str]:
    """Zombie children of ``ppid`` that stay zombies for ``grace`` seconds."""
    deadline = time.monotonic() + grace
    while True:
        zombies = {p: s for p, s in children_of(ppid).items() if s == "Z"}
        if not zombies or time.monotonic() > deadline:
            return zombies
        time.sleep(0.05)


def server_pid() -> int:
    """The pid of this process's fork server (starting it if needed)."""
    _spawn.prestart()
    pid = _spawn.stats().get("server_pid", -1)
    assert pid > 0, _spawn.stats()
    return pid


def servers_started() -> int:
    return _spawn.stats()["servers_started"]


def rss_kb(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0
