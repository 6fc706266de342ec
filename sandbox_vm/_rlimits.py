"""Resource limits of a sandbox process.

``memory_mb`` becomes RLIMIT_AS. Address space is not resident memory: glibc reserves
64 MiB per malloc arena and every thread reserves its stack. So the thread stack size
is set small here and malloc's arena count is capped with ``mallopt``; the fork server
also starts with ``MALLOC_ARENA_MAX=2`` in its environment (read only at process
start) for the allocations made before this runs.

RLIMIT_NPROC: fork/vfork and non-thread clone are already denied by seccomp, so the
limit only matters for threads. It counts every task of the *real uid* on the machine
and is never enforced for uid 0 (the kernel exempts the initial root user). Inside a
fresh user namespace it counts only that namespace's tasks, so a limit is set there
(``THREAD_BUDGET``) and left alone otherwise, where any tight value would make thread
creation depend on unrelated processes of the same user.
"""

from __future__ import annotations

import ctypes
import os
import resource
import threading

__all__ = ["THREAD_STACK_BYTES", "THREAD_BUDGET", "apply_limits", "limit_open_files", "planned_limits"]

THREAD_STACK_BYTES = 512 * 1024
THREAD_BUDGET = 256
CPU_HARD_GRACE = 2  # SIGXCPU at the soft limit, SIGKILL two seconds later
M_ARENA_MAX = -8
MALLOC_ARENAS = 2

Limit = tuple[str, int, int]


def planned_limits(memory_mb: int | None, cpu_seconds: float | None, *, user_namespace: bool) -> list[Limit]:
    """``(name, soft, hard)`` for every limit to set.

    ``None`` means unlimited: ``RLIM_INFINITY``, which :func:`apply_limits` lowers to
    the inherited hard limit (a process without privileges cannot raise it).
    """
    inf = resource.RLIM_INFINITY
    limits: list[Limit] = []
    if memory_mb is None:
        limits.append(("RLIMIT_AS", inf, inf))
    else:
        limits.append(("RLIMIT_AS", memory_mb * 1024 * 1024, memory_mb * 1024 * 1024))
    if cpu_seconds is None:
        limits.append(("RLIMIT_CPU", inf, inf))
    else:
        soft = max(1, int(-(-cpu_seconds // 1)))  # whole seconds, rounded up
        # As pid 1 of its own PID namespace the sandbox never receives SIGXCPU (the
        # kernel drops default-action signals to a namespace init), so the hard limit
        # is the one that ends it: make it the limit itself.
        grace = 0 if os.getpid() == 1 else CPU_HARD_GRACE
        limits.append(("RLIMIT_CPU", soft, soft + grace))
    limits += [("RLIMIT_FSIZE", 0, 0), ("RLIMIT_CORE", 0, 0), ("RLIMIT_MEMLOCK", 0, 0),
               ("RLIMIT_MSGQUEUE", 0, 0)]
    if user_namespace:
        limits.append(("RLIMIT_NPROC", THREAD_BUDGET, THREAD_BUDGET))
    return limits


def apply_limits(limits: list[Limit]) -> None:
    """Shrink thread stacks and malloc arenas, then set ``limits``. Raises OSError."""
    threading.stack_size(THREAD_STACK_BYTES)
    try:
        ctypes.CDLL(None).mallopt(M_ARENA_MAX, MALLOC_ARENAS)
    except AttributeError:  # not glibc
        pass
    for name, soft, hard in limits:
        _set(name, soft, hard)


def limit_open_files(highest_fd: int) -> int:
    """Set RLIMIT_NOFILE just above ``highest_fd`` (the limit bounds fd *numbers*)."""
    n = highest_fd + 1 + 8
    _set("RLIMIT_NOFILE", n, n)
    return n


def _set(name: str, soft: int, hard: int) -> None:
    resource_id = getattr(resource, name)
    inherited = resource.getrlimit(resource_id)[1]
    if inherited != resource.RLIM_INFINITY:
        soft = inherited if soft == resource.RLIM_INFINITY else min(soft, inherited)
        hard = inherited if hard == resource.RLIM_INFINITY else min(hard, inherited)
        soft = min(soft, hard)
    try:
        resource.setrlimit(resource_id, (soft, hard))
    except ValueError as exc:  # CPython reports EPERM from setrlimit as ValueError
        raise PermissionError(1, f"setrlimit({name}): {exc}") from None
