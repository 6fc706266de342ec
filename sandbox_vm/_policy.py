"""The seccomp syscall policy of a sandbox process, as plain data.

Everything not allowed here fails with ``EPERM`` (Python sees ``PermissionError``).
Rules are grouped by purpose, in the manner of Chromium's baseline policy; each rule
says why it is there. File access is allowed at the syscall level because Landlock
(applied before seccomp) decides *which* files: seccomp only removes kernel surface.

``_seccomp.compile_policy`` turns a :class:`Policy` into classic BPF.
"""

from __future__ import annotations

import errno as _errno
import os

from ._record import record

__all__ = [
    "ALLOW", "KILL", "Action", "ArgCheck", "Group", "Policy", "Rule", "UnsupportedArch",
    "AUDIT_ARCH", "SYSCALLS", "build_policy", "current_arch", "denied_syscalls",
]


@record
class Action:
    """What the filter returns: ``kind`` is 'allow', 'errno' or 'kill'."""

    kind: str
    errno: int = 0

    def __str__(self) -> str:
        return _errno.errorcode.get(self.errno, str(self.errno)) if self.kind == "errno" else self.kind


ALLOW = Action("allow")
KILL = Action("kill")
EPERM = Action("errno", _errno.EPERM)
ENOSYS = Action("errno", _errno.ENOSYS)


@record
class ArgCheck:
    """A test on one 32-bit half of syscall argument ``arg`` (0-based).

    ``op`` is 'in' (the half equals one of ``values``), 'all_set' (every bit of
    ``values[0]`` is set) or 'none_set' (no bit of ``values[0]`` is set). ``half`` is
    'lo' or 'hi'. Most arguments are C ``int`` or flags the kernel truncates to 32
    bits, so checking the low half is exactly what the kernel acts on.
    """

    arg: int
    op: str
    values: tuple[int, ...]
    half: str = "lo"


def one_of(arg: int, *values: int) -> ArgCheck:
    """Argument ``arg`` (low 32 bits) is one of ``values``."""
    return ArgCheck(arg, "in", tuple(v & 0xFFFFFFFF for v in values))


def all_set(arg: int, mask: int) -> ArgCheck:
    return ArgCheck(arg, "all_set", (mask,))


def none_set(arg: int, mask: int) -> ArgCheck:
    return ArgCheck(arg, "none_set", (mask,))


def is_null(arg: int) -> tuple[ArgCheck, ArgCheck]:
    """Argument ``arg`` is a NULL pointer (both halves zero)."""
    return (ArgCheck(arg, "in", (0,)), ArgCheck(arg, "in", (0,), "hi"))


@record
class Rule:
    """``syscall`` gets ``action`` when every check in ``when`` holds, else ``otherwise``."""

    syscall: str
    reason: str
    action: Action = ALLOW
    when: tuple[ArgCheck, ...] = ()
    otherwise: Action = EPERM


@record
class Group:
    name: str
    reason: str
    rules: tuple[Rule, ...]


@record
class Policy:
    """The whole filter for one process on one architecture."""

    arch: str
    pid: int
    groups: tuple[Group, ...]
    default: Action = EPERM

    def rules(self) -> list[Rule]:
        return [rule for group in self.groups for rule in group.rules]


class UnsupportedArch(Exception):
    """No syscall table for this CPU architecture."""


def _allow(reason: str, *names: str) -> tuple[Rule, ...]:
    return tuple(Rule(name, reason) for name in names)


# clone(2) flags (include/uapi/linux/sched.h)
CLONE_THREAD = 0x00010000
CLONE_NAMESPACES = (
    0x02000000  # CLONE_NEWCGROUP
    | 0x04000000  # CLONE_NEWUTS
    | 0x08000000  # CLONE_NEWIPC
    | 0x10000000  # CLONE_NEWUSER
    | 0x20000000  # CLONE_NEWPID
    | 0x40000000  # CLONE_NEWNET
    | 0x00020000  # CLONE_NEWNS
    | 0x00000080  # CLONE_NEWTIME
)
# fcntl(2) commands that only touch the caller's own descriptor table / status flags.
F_DUPFD, F_GETFD, F_SETFD, F_GETFL, F_SETFL, F_DUPFD_CLOEXEC = 0, 1, 2, 3, 4, 1030
# ioctl(2) requests CPython issues on its own descriptors (same values on x86_64, aarch64).
TCGETS, TIOCGWINSZ, FIONREAD, FIONBIO, FIONCLEX, FIOCLEX = 0x5401, 0x5413, 0x541B, 0x5421, 0x5450, 0x5451
PR_SET_NAME, PR_GET_NAME = 15, 16


def _groups(pid: int) -> tuple[Group, ...]:
    me = one_of(0, pid)
    me_or_zero = one_of(0, 0, pid)
    return (
        Group("general_io", "reading and writing descriptors the process already holds", (
            *_allow("the channel and stdout/stderr are plain fds", "read", "write", "readv", "writev"),
            *_allow("positional I/O on files Landlock let it open", "pread64", "pwrite64", "preadv", "pwritev", "lseek"),
            *_allow("descriptor housekeeping", "close", "close_range", "dup", "dup2", "dup3"),
            *_allow("in-process pipes connect nothing outside", "pipe", "pipe2", "eventfd2"),
            Rule("fcntl", "fd flags only: F_SETOWN/F_SETSIG would aim SIGIO at other processes",
                 when=(one_of(1, F_DUPFD, F_GETFD, F_SETFD, F_GETFL, F_SETFL, F_DUPFD_CLOEXEC),)),
            Rule("ioctl", "isatty, terminal size, FIONREAD, non-blocking and close-on-exec only",
                 when=(one_of(1, TCGETS, TIOCGWINSZ, FIONREAD, FIONBIO, FIONCLEX, FIOCLEX),)),
        )),
        Group("file_lookup", "imports open and stat files; Landlock decides which ones", (
            *_allow("opening is confined by Landlock to read-only library paths", "open", "openat"),
            *_allow("stat does not reveal contents", "stat", "fstat", "lstat", "newfstatat", "statx"),
            *_allow("existence checks", "access", "faccessat", "faccessat2"),
            *_allow("os.path.realpath and directory listing", "readlink", "readlinkat", "getdents64", "getcwd"),
        )),
        Group("polling", "waiting on the process's own descriptors", _allow(
            "selectors on the channel",
            "poll", "ppoll", "select", "pselect6", "epoll_create", "epoll_create1", "epoll_ctl",
            "epoll_wait", "epoll_pwait", "epoll_pwait2",
        )),
        Group("memory", "the allocator and ctypes map memory; RLIMIT_AS bounds it", _allow(
            "heap and mappings", "brk", "mmap", "munmap", "mprotect", "mremap", "madvise", "msync",
        )),
        Group("futex", "locks and thread bookkeeping used by glibc and CPython", (
            *_allow("the GIL and every lock", "futex"),
            *_allow("set by glibc in every new thread", "set_robust_list", "rseq", "set_tid_address"),
        )),
        Group("threads", "threading works; new processes and namespaces do not", (
            Rule("clone", "threads only: CLONE_THREAD set and no namespace flag",
                 when=(all_set(0, CLONE_THREAD), none_set(0, CLONE_NAMESPACES))),
            Rule("clone3", "its flags live in memory a filter cannot read; glibc then falls back to clone",
                 action=ENOSYS),
            *_allow("scheduling of its own threads", "sched_yield", "gettid"),
            Rule("sched_getaffinity", "os.sched_getaffinity / cpu count of itself only", when=(me_or_zero,)),
        )),
        Group("signals", "handlers and masks; signals go only to the process itself", (
            *_allow("handler setup and delivery", "rt_sigaction", "rt_sigprocmask", "rt_sigreturn",
                    "sigaltstack", "rt_sigpending", "rt_sigsuspend", "rt_sigtimedwait", "pause"),
            *_allow("timers signal only the caller", "alarm", "setitimer", "getitimer"),
            Rule("kill", "only its own pid (0, negative and foreign pids are denied)", when=(me,)),
            Rule("tkill", "only its main thread (tid == pid)", when=(me,)),
            Rule("tgkill", "only threads of its own thread group", when=(me,)),
            Rule("rt_sigqueueinfo", "only its own pid", when=(me,)),
            Rule("rt_tgsigqueueinfo", "only its own thread group", when=(me,)),
        )),
        Group("time", "clocks and sleeping", _allow(
            "time.time, time.sleep, timeouts",
            "clock_gettime", "clock_getres", "clock_nanosleep", "gettimeofday", "time", "nanosleep",
        )),
        Group("process_info", "facts about itself", (
            *_allow("identity", "getpid", "getppid", "getuid", "geteuid", "getgid", "getegid",
                    "getresuid", "getresgid", "getgroups", "uname"),
            *_allow("resource accounting", "getrusage", "times", "getrlimit"),
            Rule("prlimit64", "read-only (new_limit NULL) and only of itself: limits cannot be raised",
                 when=(me_or_zero, *is_null(2))),
            Rule("prctl", "thread names only", when=(one_of(0, PR_SET_NAME, PR_GET_NAME),)),
            *_allow("os.urandom and hash seeds", "getrandom"),
        )),
        Group("exit", "ending threads and the process", _allow(
            "normal termination", "exit", "exit_group", "restart_syscall",
        )),
    )


# Denied by the default action; listed so the reasons are written down (and tested).
DENIED: dict[str, str] = {
    **dict.fromkeys(("socket", "socketpair", "connect", "bind", "listen", "accept", "accept4",
                     "sendto", "recvfrom", "sendmsg", "recvmsg", "sendmmsg", "recvmmsg", "shutdown"),
                    "no network and no fd passing; the channel is read/write on an inherited fd"),
    **dict.fromkeys(("fork", "vfork", "execve", "execveat"), "no new processes or programs"),
    **dict.fromkeys(("ptrace", "process_vm_readv", "process_vm_writev", "pidfd_open", "pidfd_getfd",
                     "pidfd_send_signal", "kcmp"),
                    "no access to other processes (pidfd_send_signal names its target by fd, so it cannot be checked)"),
    **dict.fromkeys(("io_uring_setup", "io_uring_enter", "io_uring_register"),
                    "io_uring performs I/O that seccomp never sees"),
    **dict.fromkeys(("bpf", "userfaultfd", "perf_event_open"), "large kernel attack surface"),
    **dict.fromkeys(("keyctl", "add_key", "request_key"), "kernel keyrings are shared state"),
    **dict.fromkeys(("mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "open_tree",
                     "move_mount", "fsopen", "fsmount", "fspick", "mount_setattr"),
                    "no changes to namespaces or the mount table"),
    "open_by_handle_at": "bypasses path-based confinement",
    **dict.fromkeys(("kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
                     "reboot"), "machine administration"),
    "personality": "could disable ASLR or change syscall semantics",
    "seccomp": "the sandbox never needs its own filters; denying keeps the notifier and filter "
               "memory out of reach (stacking could only restrict further)",
    "setrlimit": "limits are fixed by the host",
    "arch_prctl": "not used by CPython once running",
    "memfd_create": "no anonymous files needed",
    "openat2": "not used by CPython",
}


def build_policy(pid: int, arch: str | None = None) -> Policy:
    """The policy for the process ``pid`` (as it sees itself) on ``arch``."""
    arch = arch or current_arch()
    if arch not in SYSCALLS:
        raise UnsupportedArch(f"no seccomp syscall table for {arch!r} (supported: {', '.join(SYSCALLS)})")
    if pid <= 0:
        raise ValueError(f"pid must be positive, not {pid}")
    return Policy(arch, pid, _groups(pid))


def denied_syscalls() -> dict[str, str]:
    return dict(DENIED)


def current_arch() -> str:
    machine = os.uname().machine.lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}

# Syscall numbers of every name used above (from the kernel's uapi unistd headers).
# x32 system calls arrive with AUDIT_ARCH_X86_64 and bit 30 set; the filter kills them.
X32_SYSCALL_BIT = 0x40000000
SYSCALLS: dict[str, dict[str, int]] = {
    "x86_64": {
        "accept": 43, "accept4": 288, "access": 21, "add_key": 248, "alarm": 37,
        "arch_prctl": 158, "bind": 49, "bpf": 321, "brk": 12, "chroot": 161,
        "clock_getres": 229, "clock_gettime": 228, "clock_nanosleep": 230, "clone": 56,
        "clone3": 435, "close": 3, "close_range": 436, "connect": 42, "delete_module": 176,
        "dup": 32, "dup2": 33, "dup3": 292, "epoll_create": 213, "epoll_create1": 291,
        "epoll_ctl": 233, "epoll_pwait": 281, "epoll_pwait2": 441, "epoll_wait": 232,
        "eventfd2": 290, "execve": 59, "execveat": 322, "exit": 60, "exit_group": 231,
        "faccessat": 269, "faccessat2": 439, "fcntl": 72, "finit_module": 313, "fork": 57,
        "fsmount": 432, "fsopen": 430, "fspick": 433, "fstat": 5, "futex": 202, "getcwd": 79,
        "getdents64": 217, "getegid": 108, "geteuid": 107, "getgid": 104, "getgroups": 115,
        "getitimer": 36, "getpid": 39, "getppid": 110, "getrandom": 318, "getresgid": 120,
        "getresuid": 118, "getrlimit": 97, "getrusage": 98, "gettid": 186, "gettimeofday": 96,
        "getuid": 102, "init_module": 175, "io_uring_enter": 426, "io_uring_register": 427,
        "io_uring_setup": 425, "ioctl": 16, "kcmp": 312, "kexec_file_load": 320,
        "kexec_load": 246, "keyctl": 250, "kill": 62, "listen": 50, "lseek": 8, "lstat": 6,
        "madvise": 28, "memfd_create": 319, "mmap": 9, "mount": 165, "mount_setattr": 442,
        "move_mount": 429, "mprotect": 10, "mremap": 25, "msync": 26, "munmap": 11,
        "nanosleep": 35, "newfstatat": 262, "open": 2, "open_by_handle_at": 304,
        "open_tree": 428, "openat": 257, "openat2": 437, "pause": 34, "perf_event_open": 298,
        "personality": 135, "pidfd_getfd": 438, "pidfd_open": 434, "pidfd_send_signal": 424,
        "pipe": 22, "pipe2": 293, "pivot_root": 155, "poll": 7, "ppoll": 271, "prctl": 157,
        "pread64": 17, "preadv": 295, "prlimit64": 302, "process_vm_readv": 310,
        "process_vm_writev": 311, "pselect6": 270, "ptrace": 101, "pwrite64": 18,
        "pwritev": 296, "read": 0, "readlink": 89, "readlinkat": 267, "readv": 19,
        "reboot": 169, "recvfrom": 45, "recvmmsg": 299, "recvmsg": 47, "request_key": 249,
        "restart_syscall": 219, "rseq": 334, "rt_sigaction": 13, "rt_sigpending": 127,
        "rt_sigprocmask": 14, "rt_sigqueueinfo": 129, "rt_sigreturn": 15, "rt_sigsuspend": 130,
        "rt_sigtimedwait": 128, "rt_tgsigqueueinfo": 297, "sched_getaffinity": 204,
        "sched_yield": 24, "seccomp": 317, "select": 23, "sendmmsg": 307, "sendmsg": 46,
        "sendto": 44, "set_robust_list": 273, "set_tid_address": 218, "setitimer": 38,
        "setns": 308, "setrlimit": 160, "shutdown": 48, "sigaltstack": 131, "socket": 41,
        "socketpair": 53, "stat": 4, "statx": 332, "tgkill": 234, "time": 201, "times": 100,
        "tkill": 200, "umount2": 166, "uname": 63, "unshare": 272, "userfaultfd": 323,
        "vfork": 58, "write": 1, "writev": 20,
    },
    "aarch64": {
        "accept": 202, "accept4": 242, "add_key": 217, "bind": 200, "bpf": 280, "brk": 214,
        "chroot": 51, "clock_getres": 114, "clock_gettime": 113, "clock_nanosleep": 115,
        "clone": 220, "clone3": 435, "close": 57, "close_range": 436, "connect": 203,
        "delete_module": 106, "dup": 23, "dup3": 24, "epoll_create1": 20, "epoll_ctl": 21,
        "epoll_pwait": 22, "epoll_pwait2": 441, "eventfd2": 19, "execve": 221, "execveat": 281,
        "exit": 93, "exit_group": 94, "faccessat": 48, "faccessat2": 439, "fcntl": 25,
        "finit_module": 273, "fsmount": 432, "fsopen": 430, "fspick": 433, "fstat": 80,
        "futex": 98, "getcwd": 17, "getdents64": 61, "getegid": 177, "geteuid": 175,
        "getgid": 176, "getgroups": 158, "getitimer": 102, "getpid": 172, "getppid": 173,
        "getrandom": 278, "getresgid": 150, "getresuid": 148, "getrlimit": 163,
        "getrusage": 165, "gettid": 178, "gettimeofday": 169, "getuid": 174,
        "init_module": 105, "io_uring_enter": 426, "io_uring_register": 427,
        "io_uring_setup": 425, "ioctl": 29, "kcmp": 272, "kexec_file_load": 294,
        "kexec_load": 104, "keyctl": 219, "kill": 129, "listen": 201, "lseek": 62,
        "madvise": 233, "memfd_create": 279, "mmap": 222, "mount": 40, "mount_setattr": 442,
        "move_mount": 429, "mprotect": 226, "mremap": 216, "msync": 227, "munmap": 215,
        "nanosleep": 101, "newfstatat": 79, "open_by_handle_at": 265, "open_tree": 428,
        "openat": 56, "openat2": 437, "perf_event_open": 241, "personality": 92,
        "pidfd_getfd": 438, "pidfd_open": 434, "pidfd_send_signal": 424, "pipe2": 59,
        "pivot_root": 41, "ppoll": 73, "prctl": 167, "pread64": 67, "preadv": 69,
        "prlimit64": 261, "process_vm_readv": 270, "process_vm_writev": 271, "pselect6": 72,
        "ptrace": 117, "pwrite64": 68, "pwritev": 70, "read": 63, "readlinkat": 78,
        "readv": 65, "reboot": 142, "recvfrom": 207, "recvmmsg": 243, "recvmsg": 212,
        "request_key": 218, "restart_syscall": 128, "rseq": 293, "rt_sigaction": 134,
        "rt_sigpending": 136, "rt_sigprocmask": 135, "rt_sigqueueinfo": 138,
        "rt_sigreturn": 139, "rt_sigsuspend": 133, "rt_sigtimedwait": 137,
        "rt_tgsigqueueinfo": 240, "sched_getaffinity": 123, "sched_yield": 124, "seccomp": 277,
        "sendmmsg": 269, "sendmsg": 211, "sendto": 206, "set_robust_list": 99,
        "set_tid_address": 96, "setitimer": 103, "setns": 268, "setrlimit": 164,
        "shutdown": 210, "sigaltstack": 132, "socket": 198, "socketpair": 199, "statx": 291,
        "tgkill": 131, "times": 153, "tkill": 130, "umount2": 39, "uname": 160, "unshare": 97,
        "userfaultfd": 282, "write": 64, "writev": 66,
    },
}
