"""Locking down a freshly started sandbox process, as an ordered plan.

:func:`build_plan` turns a :class:`SandboxConfig` into a list of named steps (pure
data, testable without privileges); :func:`lock_down` executes them in order:

1. ``close_fds``   close every descriptor except the kept ones
2. ``namespaces``  unshare user, net, ipc, mount, uts (always best effort)
3. ``rlimits``     address space, CPU, file size, core dumps, ...
4. ``landlock``    read-only stdlib and allowed packages, nothing else
5. ``seccomp``     RLIMIT_NOFILE, then the syscall filter: last, so the filter need
                   not allow anything the earlier steps use

``strict`` raises :class:`LockdownFailed` unless rlimits, Landlock and seccomp are all
in force; ``best-effort`` applies what works and records what is missing; ``none``
only closes descriptors and reports every layer missing.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import os
import time
TYPE_CHECKING = False
if TYPE_CHECKING:  # (typing is not imported at run time: it costs start-up)
    from typing import Callable

from . import _landlock, _namespaces, _policy, _rlimits, _seccomp
from ._config import SandboxConfig
from ._record import record

__all__ = [
    "LayerState", "LockdownFailed", "LockdownReport", "Step", "build_plan", "compile_seccomp", "lock_down", "run_plan",
]


class LockdownFailed(Exception):
    """A lockdown step failed: ``step`` names it, ``errno`` and ``hint`` say why."""

    def __init__(self, step: str, errno: int, hint: str) -> None:
        super().__init__(f"failed at step {step}: errno {errno}: {hint}")
        self.step = step
        self.errno = errno
        self.hint = hint


@record
class LayerState:
    """One layer after lockdown: whether it is in force, what it did, what it cost."""

    layer: str
    in_force: bool
    detail: str = ""
    hint: str = ""
    seconds: float = 0.0


@record
class LockdownReport:
    layers: tuple[LayerState, ...] = ()
    confinement: str = ""

    def missing(self) -> list[str]:
        return [l.layer for l in self.layers if not l.in_force]

    def __str__(self) -> str:
        lines = [f"confinement={self.confinement!r}"]
        for l in self.layers:
            mark = "ok" if l.in_force else "MISSING"
            extra = f" -- {l.hint}" if l.hint and not l.in_force else ""
            lines.append(f"  {l.layer:<10} {mark:<7} {l.seconds * 1e3:7.2f} ms  {l.detail}{extra}")
        return "\n".join(lines)


@record
class Step:
    """One planned step. ``required``: failing it aborts the lockdown."""

    name: str
    required: bool
    params: tuple[tuple[str, object], ...] = ()

    def param(self, key: str) -> object:
        return dict(self.params)[key]


LAYERS = ("namespaces", "rlimits", "landlock", "seccomp")


def build_plan(config: SandboxConfig) -> list[Step]:
    """The ordered steps ``config`` asks for (no side effects)."""
    plan = [Step("close_fds", True)]
    if config.confinement == "none":
        return plan
    strict = config.confinement == "strict"
    return plan + [
        Step("namespaces", False, (("kinds", tuple(_namespaces.KINDS)),)),
        Step("rlimits", strict, (("memory_mb", config.memory_mb), ("cpu_seconds", config.cpu_seconds))),
        Step("landlock", strict, (("allow_imports", tuple(config.allow_imports)),)),
        Step("seccomp", strict),
    ]


class _StepError(Exception):
    def __init__(self, err: int, detail: str, hint: str) -> None:
        super().__init__(detail)
        self.errno, self.detail, self.hint = err, detail, hint


class _Run:
    """State shared by the steps of one execution."""

    def __init__(self, keep_fds: tuple[int, ...]) -> None:
        self.keep_fds = tuple(sorted(set(keep_fds)))
        self.user_namespace = False
        self.ruleset: _landlock.Ruleset | None = None


def lock_down(config: SandboxConfig, *, keep_fds: tuple[int, ...]) -> LockdownReport:
    """Confine the calling process as ``config`` says; see the module docstring.

    Call it while the process has a single thread. Raises :class:`LockdownFailed`
    (``strict``) naming the step, the errno and what would enable the layer.
    """
    return run_plan(build_plan(config), keep_fds=keep_fds, confinement=config.confinement)


def run_plan(plan: list[Step], *, keep_fds: tuple[int, ...], confinement: str = "") -> LockdownReport:
    run = _Run(keep_fds)
    for step in plan:
        if step.name == "landlock":
            run.ruleset = _landlock.cached(step.param("allow_imports"))  # type: ignore[arg-type]
    states: list[LayerState] = []
    for step in plan:
        start = time.perf_counter()
        try:
            detail = _HANDLERS[step.name](step, run)
        except _StepError as exc:
            if step.required:
                raise LockdownFailed(step.name, exc.errno, f"{exc.detail}: {exc.hint}") from None
            states.append(LayerState(step.name, False, exc.detail, exc.hint, time.perf_counter() - start))
        else:
            states.append(LayerState(step.name, True, detail, "", time.perf_counter() - start))
    planned = {s.name for s in plan}
    for layer in LAYERS:
        if layer not in planned:
            states.append(LayerState(layer, False, f"confinement={confinement!r}",
                                     "confinement='none' is for development only: nothing is confined"))
    return LockdownReport(tuple(states), confinement)


# --- step handlers: each returns a detail string or raises _StepError -------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
SYS_CLOSE_RANGE = 436  # same number on x86_64 and aarch64


def _close_fds(step: Step, run: _Run) -> str:
    keep = set(run.keep_fds)
    if run.ruleset is not None:  # prepared by a fork server: the only cached fd kept
        keep.add(run.ruleset.fd)
    _landlock.discard_cache(keep=run.ruleset)
    lo = 0
    for fd in [*sorted(keep), None]:
        hi = 0xFFFFFFFF if fd is None else fd - 1
        if lo <= hi:
            _close_range(lo, hi)
        if fd is not None:
            lo = fd + 1
    return f"kept fds {sorted(keep)}"


def _close_range(lo: int, hi: int) -> None:
    if _libc.syscall(ctypes.c_long(SYS_CLOSE_RANGE), ctypes.c_uint(lo), ctypes.c_uint(hi), ctypes.c_uint(0)) == 0:
        return
    os.closerange(lo, min(hi + 1, os.sysconf("SC_OPEN_MAX")))


def _namespaces_step(step: Step, run: _Run) -> str:
    result = _namespaces.unshare_all(step.param("kinds"))  # type: ignore[arg-type]
    run.user_namespace = "user" in result.taken
    cost = ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in result.seconds.items())
    detail = f"unshared {','.join(result.taken) or 'nothing'} ({cost})"
    if result.failed:
        kind, err = next(iter(result.failed.items()))
        detail += "; refused: " + ",".join(f"{k} ({_errno.errorcode.get(e, e)})" for k, e in result.failed.items())
        if not result.taken:
            raise _StepError(err, detail, _namespaces.hint(kind, err))
    return detail


def _rlimits_step(step: Step, run: _Run) -> str:
    limits = _rlimits.planned_limits(step.param("memory_mb"), step.param("cpu_seconds"),  # type: ignore[arg-type]
                                     user_namespace=run.user_namespace)
    try:
        _rlimits.apply_limits(limits)
    except OSError as exc:
        raise _StepError(exc.errno or _errno.EPERM, str(exc),
                         "the inherited hard limit is lower than asked, or setrlimit is filtered") from None
    return " ".join(f"{n[7:]}={'unlimited' if s < 0 else s}" for n, s, _ in limits)


def _thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        import threading

        return threading.active_count()


def _landlock_step(step: Step, run: _Run) -> str:
    if _thread_count() > 1:
        raise _StepError(_errno.EBUSY, "process has more than one thread",
                         "Landlock restricts only the calling thread: lock down before starting threads")
    try:
        ruleset = run.ruleset or _landlock.prepare(step.param("allow_imports"))  # type: ignore[arg-type]
        _landlock.fill_import_caches(ruleset.finder_dirs)
        _landlock.enforce(ruleset)
    except OSError as exc:
        err = exc.errno or 0
        raise _StepError(err, f"Landlock unavailable ({os.strerror(err)})", _landlock.unavailable_hint(err)) from None
    _landlock.install_import_guard()
    _landlock.discard_cache()
    return f"ABI {ruleset.abi}, {len(ruleset.paths)} read-only rules"


def _seccomp_step(step: Step, run: _Run) -> str:
    highest = max(run.keep_fds, default=2)
    try:
        nofile = _rlimits.limit_open_files(highest)
    except OSError as exc:
        raise _StepError(exc.errno or _errno.EPERM, str(exc), "could not lower RLIMIT_NOFILE") from None
    policy, program = _COMPILED.get(os.getpid(), (None, None))
    try:
        policy = policy or _policy.build_policy(os.getpid())
    except _policy.UnsupportedArch as exc:
        raise _StepError(_errno.ENOSYS, str(exc), "seccomp policy exists for x86_64 and aarch64 only") from None
    try:
        size = _seccomp.install(policy, program)
    except OSError as exc:
        err = exc.errno or 0
        raise _StepError(err, f"seccomp filter refused ({os.strerror(err)})", _seccomp_hint(err)) from None
    return f"{policy.arch} filter, {size} instructions; NOFILE={nofile}"


# pid -> (policy, compiled program): built ahead of time by a fork server whose
# sandboxes are pid 1 of their own PID namespace, so each sandbox need not.
_COMPILED: dict[int, tuple[_policy.Policy, bytes]] = {}


def compile_seccomp(pid: int) -> None:
    """Build and compile the seccomp filter for a future sandbox that will be ``pid``."""
    try:
        policy = _policy.build_policy(pid)
    except _policy.UnsupportedArch:
        return  # the seccomp step says so when it runs
    _COMPILED[pid] = (policy, _seccomp.pack(_seccomp.compile_policy(policy)))


def _seccomp_hint(err: int) -> str:
    if err == _errno.EINVAL:
        return "kernel built without CONFIG_SECCOMP_FILTER (or the filter is malformed)"
    if err == _errno.ENOSYS:
        return "kernel built without CONFIG_SECCOMP"
    if err == _errno.EACCES:
        return "no_new_privs is not set and the process lacks CAP_SYS_ADMIN"
    if err == _errno.ENOMEM:
        return "too many seccomp filters already attached (or memory exhausted)"
    return os.strerror(err)


_HANDLERS: dict[str, Callable[[Step, _Run], str]] = {
    "close_fds": _close_fds,
    "namespaces": _namespaces_step,
    "rlimits": _rlimits_step,
    "landlock": _landlock_step,
    "seccomp": _seccomp_step,
}
