"""``Sandbox(cpus=...)``: where the sandbox's process runs (a placement hint)."""

from __future__ import annotations

import os
import threading

import pytest

from conftest import make_sandbox

CPUS = sorted(os.sched_getaffinity(0))

AFFINITY_SRC = """
import os, threading

def mine():
    return sorted(os.sched_getaffinity(0))

def in_thread():
    out = []
    t = threading.Thread(target=lambda: out.append(sorted(os.sched_getaffinity(0))))
    t.start()
    t.join()
    return out[0]

def widen():
    try:
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    except OSError as exc:
        return type(exc).__name__
    return "widened"
"""


def test_a_sandbox_runs_on_the_cpus_it_was_given(sandbox_factory):
    cpu = CPUS[-1]
    sb = sandbox_factory(cpus={cpu})
    mod = sb.load(AFFINITY_SRC, "aff")
    assert mod.mine() == [cpu]
    assert mod.in_thread() == [cpu]  # threads it starts inherit the set
    assert sb.eval("1 + 1") == 2


def test_caller_means_the_creating_threads_cpus():
    cpu = CPUS[0]
    out: list = []

    def make() -> None:
        os.sched_setaffinity(0, {cpu})  # this helper thread only
        sb = make_sandbox(cpus="caller")
        try:
            out.append(sb.load(AFFINITY_SRC, "aff").mine())
        finally:
            sb.close()

    t = threading.Thread(target=make)
    t.start()
    t.join(60)
    assert out == [[cpu]]


def test_by_default_the_kernel_places_it(sb):
    assert sb.load(AFFINITY_SRC, "aff").mine() == CPUS


@pytest.mark.parametrize("bad", [set(), {-1}, {1.5}, "all", {True}])
def test_bad_cpus_are_refused_before_a_process_starts(bad):
    with pytest.raises(ValueError, match="cpus"):
        make_sandbox(cpus=bad)


def test_cpus_this_process_cannot_use_are_refused_clearly():
    with pytest.raises(ValueError, match=r"cpus=\[4095\] cannot be used .*may run on CPUs"):
        make_sandbox(cpus={4095})


def test_sandbox_code_cannot_move_itself_off_its_cpus(sandbox_factory):
    """Under strict, seccomp refuses sched_setaffinity: the sandbox stays where the
    host put it."""
    if len(CPUS) < 2:
        pytest.skip("needs two CPUs to tell a widened set from the given one")
    sb = sandbox_factory(cpus={CPUS[0]})
    mod = sb.load(AFFINITY_SRC, "aff")
    if sb.confinement != "strict":
        pytest.skip("seccomp is what refuses it")
    assert mod.widen() in ("PermissionError", "OSError")
    assert mod.mine() == [CPUS[0]]
