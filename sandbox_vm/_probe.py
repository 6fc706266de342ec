"""What confinement this machine can give, without confining the caller.

Namespaces are tried in short-lived forked children (one per kind); Landlock and
seccomp are asked with calls that restrict nothing. Backs ``capbridge check``.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno as _errno
import os
import struct
import sys
import time

from . import _landlock, _namespaces, _policy

__all__ = ["LayerStatus", "format_table", "probe"]


@dataclasses.dataclass(frozen=True)
class LayerStatus:
    """One layer: whether it is available, whether ``strict`` needs it, and why not."""

    layer: str
    available: bool
    used_by_strict: str  # "required", "if available" or "no"
    detail: str = ""
    why_not: str = ""


_RESULT = struct.Struct("=id")  # errno, seconds
PID_NS = 0x20000000  # CLONE_NEWPID: the fork server's, probed here for completeness


def probe() -> list[LayerStatus]:
    """Probe every layer; cheap (a few forks and syscalls) and side-effect free."""
    return [_interpreter(), *_namespace_layers(), _rlimits(), _landlock_layer(), _seccomp_layer()]


_STRICT_MISSING: list[str] | None = None


def strict_missing() -> list[str]:
    """What ``strict`` needs and this machine lacks, as readable reasons (cached).

    Only fork-free checks (rlimits, Landlock, seccomp), cheap enough to run before
    the first sandbox of a process.
    """
    global _STRICT_MISSING
    if _STRICT_MISSING is None:
        _STRICT_MISSING = [
            f"{st.layer}: {st.why_not}"
            for st in (_rlimits(), _landlock_layer(), _seccomp_layer())
            if not st.available
        ]
    return list(_STRICT_MISSING)


def _interpreter() -> LayerStatus:
    ok = bool(sys.executable) and os.access(sys.executable, os.X_OK)
    return LayerStatus("fresh interpreter", ok, "required", sys.executable if ok else "",
                       "" if ok else "sys.executable is not an executable Python: cannot start a fork server")


def _try_unshare_in_child(flags: int, with_user: bool) -> tuple[int, float]:
    """``(errno or 0, seconds)`` of unshare(flags) in a throwaway child process."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: only syscalls, then _exit
        try:
            err = 0
            start = time.perf_counter()
            if with_user and _namespaces.unshare(_namespaces.KINDS["user"] | flags) == 0:
                pass
            else:
                err = _namespaces.unshare(flags)
            os.write(w, _RESULT.pack(err, time.perf_counter() - start))
        finally:
            os._exit(0)
    os.close(w)
    try:
        data = os.read(r, _RESULT.size)
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    return _RESULT.unpack(data) if len(data) == _RESULT.size else (_errno.ECHILD, 0.0)


def _namespace_layers() -> list[LayerStatus]:
    out = []
    for kind, flags in [*_namespaces.KINDS.items(), ("pid", PID_NS)]:
        err, seconds = _try_unshare_in_child(flags, with_user=kind != "user")
        strict = "no (fork server)" if kind == "pid" else "if available"
        if err:
            out.append(LayerStatus(f"namespace: {kind}", False, strict, _errno.errorcode.get(err, str(err)),
                                   _namespaces.hint(kind, err)))
        else:
            out.append(LayerStatus(f"namespace: {kind}", True, strict, f"unshare took {seconds * 1e3:.2f} ms"))
    return out


def _rlimits() -> LayerStatus:
    try:
        import resource

        resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, OSError) as exc:
        return LayerStatus("rlimits", False, "required", "", f"resource limits unavailable: {exc}")
    return LayerStatus("rlimits", True, "required", "AS, CPU, FSIZE, CORE, NOFILE (+NPROC in a user namespace)")


def _landlock_layer() -> LayerStatus:
    abi, err = _landlock.abi_version()
    if not abi:
        return LayerStatus("landlock", False, "required", _errno.errorcode.get(err, str(err)),
                           _landlock.unavailable_hint(err))
    extras = []
    if abi < 4:
        extras.append("no TCP rules before ABI 4 (seccomp still blocks sockets)")
    if abi < 6:
        extras.append("no signal/abstract-socket scopes before ABI 6 (seccomp still filters them)")
    return LayerStatus("landlock", True, "required", f"ABI {abi}" + (f"; {'; '.join(extras)}" if extras else ""))


SECCOMP_GET_ACTION_AVAIL = 2
_SECCOMP_NR = {"x86_64": 317, "aarch64": 277}


def _seccomp_layer() -> LayerStatus:
    arch = _policy.current_arch()
    if arch not in _policy.SYSCALLS:
        return LayerStatus("seccomp", False, "required", arch,
                           f"capbridge has a syscall policy for {', '.join(_policy.SYSCALLS)} only, not {arch}")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    for name, action in (("errno", 0x00050000), ("kill_process", 0x80000000)):
        value = ctypes.c_uint32(action)
        if libc.syscall(ctypes.c_long(_SECCOMP_NR[arch]), ctypes.c_long(SECCOMP_GET_ACTION_AVAIL),
                        ctypes.c_long(0), ctypes.byref(value)) != 0:
            err = ctypes.get_errno()
            why = ("kernel built without CONFIG_SECCOMP / CONFIG_SECCOMP_FILTER" if err in (_errno.ENOSYS, _errno.EINVAL)
                   else f"seccomp action {name} unavailable: {os.strerror(err)}")
            if err == _errno.EPERM:
                why = "a seccomp filter on this process already denies seccomp(2) (container runtime?)"
            return LayerStatus("seccomp", False, "required", _errno.errorcode.get(err, str(err)), why)
    mode = libc.prctl(21, 0, 0, 0, 0)  # PR_GET_SECCOMP
    detail = f"{arch} filter, default EPERM" + ("; already under a filter (stacking)" if mode == 2 else "")
    return LayerStatus("seccomp", True, "required", detail)


def format_table(statuses: list[LayerStatus]) -> str:
    """A readable table: layer, available, used by strict, and details or why not."""
    rows = [("layer", "available", "strict", "details / why not")]
    for s in statuses:
        rows.append((s.layer, "yes" if s.available else "NO", s.used_by_strict,
                     s.detail if s.available else f"{s.detail}: {s.why_not}" if s.detail else s.why_not))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}" for r in rows]
    lines.insert(1, "-" * max(len(line) for line in lines))
    missing = [s.layer for s in statuses if not s.available and s.used_by_strict == "required"]
    lines.append("")
    lines.append("strict confinement: " + ("available" if not missing else f"UNAVAILABLE (missing {', '.join(missing)})"))
    return "\n".join(lines)
