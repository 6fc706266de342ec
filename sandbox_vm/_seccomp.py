"""Compile a :class:`~sandbox_vm._policy.Policy` to classic BPF and install it.

Hand-built rather than through libseccomp/pyseccomp: no system library to depend on,
and the policy stays pure data that a test can run through a BPF interpreter.

Program layout (every jump is short, so no offset ever exceeds the 8-bit limit)::

    ld arch; jeq AUDIT_ARCH ? next : KILL
    ld nr;   jge X32_BIT ? KILL : next                (x86_64 only)
    per rule:  jeq NR ? rule-block : skip-block       (a block ends in returns)
    ret DEFAULT
"""

from __future__ import annotations

import ctypes
import struct

from ._policy import AUDIT_ARCH, SYSCALLS, X32_SYSCALL_BIT, Action, ArgCheck, Policy, Rule

__all__ = ["Insn", "compile_policy", "pack", "install", "SECCOMP_RET"]

# linux/filter.h opcodes
BPF_LD_W_ABS = 0x20
BPF_JEQ_K = 0x15
BPF_JGE_K = 0x35
BPF_JSET_K = 0x45
BPF_AND_K = 0x54
BPF_RET_K = 0x06

SECCOMP_RET = {"kill": 0x80000000, "errno": 0x00050000, "allow": 0x7FFF0000}  # KILL_PROCESS, ERRNO, ALLOW
OFF_NR, OFF_ARCH, OFF_ARGS = 0, 4, 16

Insn = tuple[int, int, int, int]  # (code, jt, jf, k) == struct sock_filter


def ret(action: Action) -> Insn:
    return (BPF_RET_K, 0, 0, SECCOMP_RET[action.kind] | (action.errno & 0xFFFF))


def _load_arg(check: ArgCheck) -> Insn:
    return (BPF_LD_W_ABS, 0, 0, OFF_ARGS + 8 * check.arg + (4 if check.half == "hi" else 0))


def _check(check: ArgCheck, fail: int) -> list[Insn]:
    """Code that falls through when ``check`` holds and jumps ``fail`` instructions
    past its own end when it does not."""
    code: list[Insn] = [_load_arg(check)]
    if check.op == "none_set":
        code.append((BPF_JSET_K, fail, 0, check.values[0]))
    elif check.op == "all_set":
        code.append((BPF_AND_K, 0, 0, check.values[0]))
        code.append((BPF_JEQ_K, 0, fail, check.values[0]))
    elif check.op == "in":
        n = len(check.values)
        for i, value in enumerate(check.values):
            last = i == n - 1
            code.append((BPF_JEQ_K, n - 1 - i, fail if last else 0, value))
    else:
        raise ValueError(f"unknown check {check.op!r}")
    return code


def _rule_block(rule: Rule) -> list[Insn]:
    """Instructions run once the syscall number matched: they always return."""
    if not rule.when:
        return [ret(rule.action)]
    code: list[Insn] = []
    remaining = sum(len(_check(c, 0)) for c in rule.when)  # sizes do not depend on offsets
    for check in rule.when:
        remaining -= len(_check(check, 0))
        code += _check(check, remaining + 1)  # past the later checks and `ret action`
    return code + [ret(rule.action), ret(rule.otherwise)]


def compile_policy(policy: Policy) -> list[Insn]:
    """The filter program for ``policy`` as a list of ``(code, jt, jf, k)``."""
    numbers = SYSCALLS[policy.arch]
    kill = ret(Action("kill"))
    prog: list[Insn] = [
        (BPF_LD_W_ABS, 0, 0, OFF_ARCH),
        (BPF_JEQ_K, 1, 0, AUDIT_ARCH[policy.arch]),
        kill,
        (BPF_LD_W_ABS, 0, 0, OFF_NR),
    ]
    if policy.arch == "x86_64":
        prog += [(BPF_JGE_K, 0, 1, X32_SYSCALL_BIT), kill]
    seen: set[str] = set()
    for rule in policy.rules():
        if rule.syscall in seen:
            raise ValueError(f"syscall {rule.syscall} has two rules")
        seen.add(rule.syscall)
        if rule.syscall not in numbers:
            continue  # e.g. open(2) does not exist on aarch64
        if rule.action == policy.default and not rule.when:
            continue
        block = _rule_block(rule)
        if len(block) > 255:
            raise ValueError(f"rule for {rule.syscall} is too long for a BPF jump")
        # A rule block clobbers the accumulator, but it always returns, so later
        # `jeq NR` tests still see the syscall number.
        prog.append((BPF_JEQ_K, 0, len(block), numbers[rule.syscall]))
        prog += block
    prog.append(ret(policy.default))
    return prog


def pack(prog: list[Insn]) -> bytes:
    """The program as an array of ``struct sock_filter``."""
    return b"".join(struct.pack("=HBBI", *insn) for insn in prog)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


PR_SET_NO_NEW_PRIVS = 38
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_TSYNC = 1
_SECCOMP_NR = {"x86_64": 317, "aarch64": 277}


def install(policy: Policy, program: bytes | None = None) -> int:
    """Set no_new_privs and install the filter on every thread of the process.

    ``program`` is ``pack(compile_policy(policy))`` when it was compiled ahead of time.
    Returns the program length; raises ``OSError`` with the kernel's errno on failure.
    """
    if program is None:
        program = pack(compile_policy(policy))
    length = len(program) // 8
    if length > 4096:
        raise OSError(22, f"filter has {length} instructions, the kernel allows 4096")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "prctl(PR_SET_NO_NEW_PRIVS) failed")
    buf = ctypes.create_string_buffer(program)
    fprog = _SockFprog(length, ctypes.cast(buf, ctypes.c_void_p))
    libc.syscall.restype = ctypes.c_long
    rc = libc.syscall(ctypes.c_long(_SECCOMP_NR[policy.arch]), ctypes.c_long(SECCOMP_SET_MODE_FILTER),
                      ctypes.c_long(SECCOMP_FILTER_FLAG_TSYNC), ctypes.byref(fprog))
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, "seccomp(SECCOMP_SET_MODE_FILTER) failed")
    if rc > 0:
        raise OSError(11, f"seccomp: thread {rc} could not be synchronised")
    return length
