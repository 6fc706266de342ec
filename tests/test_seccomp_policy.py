"""The compiled seccomp program, checked decision by decision with a BPF interpreter."""

from __future__ import annotations

import errno
import struct

import pytest

from sandbox_vm import _policy, _seccomp
from sandbox_vm._policy import AUDIT_ARCH, SYSCALLS

PID = 4242


def run_bpf(prog: list[tuple[int, int, int, int]], data: bytes) -> int:
    """A classic-BPF interpreter for the opcodes the compiler emits."""
    acc, pc = 0, 0
    while True:
        assert 0 <= pc < len(prog), f"jumped out of the program at {pc}"
        code, jt, jf, k = prog[pc]
        pc += 1
        if code == 0x20:  # ld [k]
            assert k % 4 == 0 and k + 4 <= len(data)
            acc = struct.unpack_from("<I", data, k)[0]
        elif code == 0x54:  # and #k
            acc &= k
        elif code in (0x15, 0x35, 0x45):  # jeq, jge, jset
            taken = {0x15: acc == k, 0x35: acc >= k, 0x45: bool(acc & k)}[code]
            pc += jt if taken else jf
        elif code == 0x06:  # ret #k
            return k
        else:
            raise AssertionError(f"unknown opcode {code:#x}")


def decide(arch: str, name: str | int, *args: int, audit_arch: int | None = None) -> str:
    prog = _seccomp.compile_policy(_policy.build_policy(PID, arch))
    nr = SYSCALLS[arch][name] if isinstance(name, str) else name
    full = [a & (2**64 - 1) for a in args] + [0] * (6 - len(args))
    data = struct.pack("<iIQ6Q", nr, AUDIT_ARCH[arch] if audit_arch is None else audit_arch, 0, *full)
    ret = run_bpf(prog, data)
    action = ret & 0xFFFF0000
    if action == 0x7FFF0000:
        return "allow"
    if action == 0x80000000:
        return "kill"
    assert action == 0x00050000
    return errno.errorcode[ret & 0xFFFF]


ARCHES = ["x86_64", "aarch64"]
CLONE_THREAD_FLAGS = 0x003D0F00  # what glibc's pthread_create passes


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("name,args,expected", [
    ("read", (), "allow"), ("write", (), "allow"), ("openat", (), "allow"), ("futex", (), "allow"),
    ("socket", (2, 1, 0), "EPERM"), ("connect", (), "EPERM"), ("execve", (), "EPERM"),
    ("ptrace", (), "EPERM"), ("bpf", (), "EPERM"), ("io_uring_setup", (), "EPERM"), ("seccomp", (), "EPERM"),
    ("unshare", (0x10000000,), "EPERM"), ("mount", (), "EPERM"), ("setrlimit", (), "EPERM"),
    ("clone", (CLONE_THREAD_FLAGS,), "allow"),
    ("clone", (0x01200011,), "EPERM"),  # fork()
    ("clone", (CLONE_THREAD_FLAGS | 0x10000000,), "EPERM"),  # thread + CLONE_NEWUSER
    ("clone", (CLONE_THREAD_FLAGS | 0x40000000,), "EPERM"),  # thread + CLONE_NEWNET
    ("clone", (CLONE_THREAD_FLAGS | 0x00020000,), "EPERM"),  # thread + CLONE_NEWNS
    ("clone3", (), "ENOSYS"),
    ("kill", (PID, 15), "allow"), ("kill", (PID + 1, 0), "EPERM"), ("kill", (0, 0), "EPERM"),
    ("kill", (-1, 9), "EPERM"), ("kill", (-PID, 9), "EPERM"),
    ("tgkill", (PID, PID + 3, 6), "allow"), ("tgkill", (1, 1, 9), "EPERM"),
    ("tkill", (PID, 6), "allow"), ("tkill", (PID + 1, 6), "EPERM"),
    ("rt_sigqueueinfo", (PID + 1, 10, 0), "EPERM"), ("rt_tgsigqueueinfo", (PID, PID, 10, 0), "allow"),
    ("pidfd_send_signal", (3, 9, 0, 0), "EPERM"),
    ("prlimit64", (0, 9, 0, 0x7FFF0000), "allow"), ("prlimit64", (PID, 9, 0, 0x7FFF0000), "allow"),
    ("prlimit64", (0, 9, 0x7FFF0000, 0), "EPERM"), ("prlimit64", (0, 9, 1 << 32, 0), "EPERM"),
    ("prlimit64", (1, 9, 0, 0x7FFF0000), "EPERM"),
    ("ioctl", (1, 0x5401), "allow"), ("ioctl", (1, 0x5451), "allow"),
    ("ioctl", (0, 0x5412), "EPERM"),  # TIOCSTI: push input into a terminal
    ("fcntl", (3, 2, 1), "allow"), ("fcntl", (3, 8, 1), "EPERM"),  # F_SETOWN
    ("prctl", (15,), "allow"), ("prctl", (22, 2), "EPERM"),  # PR_SET_SECCOMP
    ("sched_getaffinity", (0,), "allow"), ("sched_getaffinity", (1,), "EPERM"),
])
def test_decisions(arch, name, args, expected) -> None:
    assert decide(arch, name, *args) == expected


def test_legacy_x86_64_calls() -> None:
    assert decide("x86_64", "fork") == "EPERM"
    assert decide("x86_64", "vfork") == "EPERM"
    assert decide("x86_64", "open") == "allow"


def test_unknown_syscall_gets_the_default() -> None:
    assert decide("x86_64", 999) == "EPERM"


def test_wrong_architecture_is_killed() -> None:
    assert decide("x86_64", "read", audit_arch=0x40000003) == "kill"  # i386 (int 0x80)
    assert decide("aarch64", "read", audit_arch=AUDIT_ARCH["x86_64"]) == "kill"


def test_x32_syscalls_are_killed() -> None:
    assert decide("x86_64", 0x40000000 | 0) == "kill"
    assert decide("x86_64", 0x40000000 | 39) == "kill"


@pytest.mark.parametrize("arch", ARCHES)
def test_program_shape(arch) -> None:
    prog = _seccomp.compile_policy(_policy.build_policy(PID, arch))
    assert len(prog) < 4096
    assert all(0 <= jt < 256 and 0 <= jf < 256 for _, jt, jf, _ in prog)
    assert prog[-1] == _seccomp.ret(_policy.EPERM)
    assert len(_seccomp.pack(prog)) == 8 * len(prog)


def test_every_rule_is_explained_and_known() -> None:
    policy = _policy.build_policy(PID, "x86_64")
    names = [r.syscall for r in policy.rules()]
    assert len(names) == len(set(names))
    for group in policy.groups:
        assert group.reason and all(rule.reason for rule in group.rules)
    assert set(names) <= set(SYSCALLS["x86_64"])


def test_denied_list_is_really_denied() -> None:
    allowed = {r.syscall for r in _policy.build_policy(PID, "x86_64").rules() if r.action == _policy.ALLOW}
    assert not allowed & set(_policy.DENIED)
    for arch in ARCHES:
        for name in _policy.DENIED:
            if name in SYSCALLS[arch]:
                assert decide(arch, name) == "EPERM", (arch, name)


def test_unsupported_arch_is_refused() -> None:
    with pytest.raises(_policy.UnsupportedArch, match="riscv64"):
        _policy.build_policy(PID, "riscv64")
