"""Unsharing namespaces in the sandbox process itself (PID needs a fork: not here).

Tried as one group first; if the kernel refuses, each kind on its own, so a machine
without (say) unprivileged network namespaces still gets the others. The user
namespace goes first: it is what makes the others possible without privileges.
No uid map is written, so the process sees itself as the overflow uid (65534).
"""

from __future__ import annotations

import ctypes
import os
import time

__all__ = ["KINDS", "NamespaceResult", "hint", "unshare", "unshare_ahead", "unshare_all"]

KINDS: dict[str, int] = {
    "user": 0x10000000,  # CLONE_NEWUSER
    "net": 0x40000000,  # CLONE_NEWNET
    "ipc": 0x08000000,  # CLONE_NEWIPC
    "mount": 0x00020000,  # CLONE_NEWNS
    "uts": 0x04000000,  # CLONE_NEWUTS
}

_libc = ctypes.CDLL(None, use_errno=True)


class NamespaceResult:
    """Which kinds took, why the others did not (errno), and what each cost."""

    def __init__(self, taken: list[str] | None = None, failed: dict[str, int] | None = None,
                 seconds: dict[str, float] | None = None) -> None:
        self.taken: list[str] = [] if taken is None else taken
        self.failed: dict[str, int] = {} if failed is None else failed
        self.seconds: dict[str, float] = {} if seconds is None else seconds

    def __repr__(self) -> str:
        return f"NamespaceResult(taken={self.taken!r}, failed={self.failed!r}, seconds={self.seconds!r})"

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return (self.taken, self.failed, self.seconds) == (other.taken, other.failed, other.seconds)  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]  # mutable


def unshare(flags: int) -> int:
    """0 on success, else the errno."""
    if _libc.unshare(ctypes.c_int(flags)) == 0:
        return 0
    return ctypes.get_errno()


# (pid, kinds, result) of unshare_ahead, for the next unshare_all of that process.
_AHEAD: tuple[int, tuple[str, ...], NamespaceResult] | None = None


def unshare_ahead(kinds: tuple[str, ...] = tuple(KINDS)) -> None:
    """Unshare ``kinds`` now, before this process knows its config (a fork server's
    standby child does, while it waits); the next :func:`unshare_all` for the same
    kinds in this process reports this result instead of unsharing again."""
    global _AHEAD
    _AHEAD = (os.getpid(), tuple(kinds), unshare_all(kinds))


def unshare_all(kinds: tuple[str, ...] = tuple(KINDS)) -> NamespaceResult:
    """Unshare ``kinds`` where the kernel permits; never raises for a refusal."""
    global _AHEAD
    ahead, _AHEAD = _AHEAD, None
    if ahead is not None and ahead[0] == os.getpid() and ahead[1] == tuple(kinds):
        return ahead[2]
    result = NamespaceResult()
    flags = 0
    for kind in kinds:
        flags |= KINDS[kind]
    start = time.perf_counter()
    if unshare(flags) == 0:
        result.taken = list(kinds)
        result.seconds["all"] = time.perf_counter() - start
        return result
    for kind in kinds:
        start = time.perf_counter()
        err = unshare(KINDS[kind])
        result.seconds[kind] = time.perf_counter() - start
        if err:
            result.failed[kind] = err
        else:
            result.taken.append(kind)
    return result


def hint(kind: str, err: int) -> str:
    """What would let ``kind`` be unshared after it failed with ``err``."""
    if kind == "user":
        return ("user namespaces unavailable (%s): check CONFIG_USER_NS, "
                "/proc/sys/user/max_user_namespaces, kernel.unprivileged_userns_clone and "
                "AppArmor's kernel.apparmor_restrict_unprivileged_userns; a multi-threaded "
                "process cannot unshare one" % os.strerror(err))
    option = {"net": "CONFIG_NET_NS", "ipc": "CONFIG_IPC_NS", "uts": "CONFIG_UTS_NS", "pid": "CONFIG_PID_NS"}.get(kind, "CONFIG_NAMESPACES")
    return (f"{kind} namespace unavailable ({os.strerror(err)}): needs {option} "
            "and either a user namespace or CAP_SYS_ADMIN")
