"""Escape attempts through the real front door: ``Sandbox(confinement="strict")``.

Every attack runs as sandbox code (``Sandbox.exec``) and must fail inside while the
host is unharmed. Each has a control that proves the attack is real: the same code
run with ``confinement="none"`` succeeds there, or the control shows the attempt
reached the kernel (a different errno), or the host saw the effect.

Controls run on a private fork server without PID namespaces (``nopidns``), so an
unconfined control really can see and signal the dummy ``sleep`` processes this
module starts. Controls never aim at the fork server or the test runner: those are
targets only for strict sandboxes, and real signals are sent to them only after a
signal-0 probe through the same route was refused.

After every test: the fork server is alive and was never restarted, the host has no
zombie children, and a new strict sandbox still works.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from escape_util import (  # noqa: E402
    NR,
    Verdict,
    proc_stat,
    quiet_sandbox,
    rss_kb,
    run_attacks,
    server_pid,
    servers_started,
    zombies_of,
)

from listeners import Listeners  # noqa: E402
from listeners import nothing_arrived as _nothing_arrived  # noqa: E402
import capbridge  # noqa: E402
from capbridge import Limits  # noqa: E402
from sandbox_vm import _spawn  # noqa: E402
from sandbox_vm._config import THREAD_ENV  # noqa: E402

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux confinement only")

SECRET = f"capbridge-escape-secret-{os.getpid()}-{time.time_ns()}"
SECRET_VAR = "CAPBRIDGE_ESCAPE_SECRET"
HOST_FILE_CONTENT = f"host-only file content {SECRET}".encode()
MEMORY_MB = 256
NEEDED_SYSCALLS = ("openat", "socket", "execve", "io_uring_setup", "bpf", "unshare", "mount", "ptrace",
                   "setns", "keyctl", "perf_event_open", "userfaultfd", "clone", "clone3", "prlimit64",
                   "pidfd_open", "pidfd_getfd", "process_vm_readv")


# --- module set-up -------------------------------------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def strict_available():
    """Skip the module, naming the missing layer, where strict confinement cannot start."""
    try:
        sb = capbridge.Sandbox()
    except capbridge.ConfinementUnavailable as exc:
        pytest.skip(f"strict confinement unavailable on this machine: {exc}")
    try:
        assert sb.eval("1 + 1") == 2
        layers = {name: ok for name, ok, _ in sb.confinement_report}
        for layer in ("rlimits", "landlock", "seccomp"):
            assert layers.get(layer), f"strict started without {layer}: {sb.confinement_report}"
    finally:
        sb.close()
    missing = [n for n in NEEDED_SYSCALLS if n not in NR]
    assert not missing, f"no syscall numbers for {missing} on this architecture"


@pytest.fixture(autouse=True)
def host_unharmed(strict_available):
    """After every test: same fork server alive, no zombies, new sandboxes still work."""
    server = server_pid()
    started = servers_started()
    yield
    assert servers_started() == started, "the fork server died and was restarted during the test"
    st = proc_stat(server)
    assert st is not None and st[0] not in ("Z", "X", "T", "t"), f"fork server {server} harmed: {st}"
    assert st[1] == os.getpid(), "the fork server is no longer the test runner's child"
    assert _spawn.stats()["alive"] and _spawn.stats()["server_pid"] == server
    assert not zombies_of(os.getpid()), f"zombie children of the test runner: {zombies_of(os.getpid())}"
    assert not zombies_of(server), f"zombie children of the fork server: {zombies_of(server)}"
    with capbridge.Sandbox() as sb:
        assert sb.eval("6 * 7") == 42


@pytest.fixture(scope="module")
def control_server():
    """A fork server without PID namespaces, for unconfined control runs only."""
    server = _spawn.ForkServer(pid_namespace=False)
    assert server.ready(), "control fork server did not start"
    yield server
    server.close()


def control_sandbox(control_server, **kwargs) -> capbridge.Sandbox:
    """``Sandbox(confinement="none")`` started by the no-PID-namespace control server."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_spawn, "spawn", control_server.spawn)
        return quiet_sandbox(confinement="none", **kwargs)


def _dummy(env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(["sleep", "60"], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def targets(tmp_path_factory):
    """What the attacks aim at: dummies, listeners, paths, and a host fd holding a secret."""
    tmp = tmp_path_factory.mktemp("escape")
    os.chmod(tmp, 0o777)
    secret_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), SECRET_VAR: SECRET}
    dummies = {"strict": _dummy(secret_env), "control": _dummy(secret_env)}
    net = Listeners(tmp, "escape")
    host_file = tmp / "host-secret.txt"
    host_file.write_bytes(HOST_FILE_CONTENT)
    host_fd = os.open(host_file, os.O_RDONLY)  # opened by the host before the attack sandboxes
    os.set_inheritable(host_fd, True)
    args = {
        "server": server_pid(), "runner": os.getpid(), **net.args,
        "tmp": str(tmp), "secret": SECRET, "host_file": str(host_file), "host_fd": host_fd,
        "host_content": HOST_FILE_CONTENT.decode(), "memory_mb": MEMORY_MB,
    }
    yield {"args": args, "dummies": dummies, "listeners": net.streams, "udp": net.udp, "tmp": tmp}
    for d in dummies.values():
        if d.poll() is None:
            d.kill()
        d.wait(5)
    net.close()
    os.close(host_fd)
    for root in ("/tmp", "/dev/shm"):
        for suffix in ("strict", "control"):
            try:
                os.unlink(f"{root}/capbridge-escape-{os.getpid()}-{suffix}")
            except OSError:
                pass


def nothing_arrived(t) -> None:
    _nothing_arrived(t["listeners"], t["udp"])


# --- the attack code (runs inside; ARGS says what to aim at) --------------------------------

ATTACKS = r'''
import resource, stat
PTRACE_SEIZE, PTRACE_DETACH = 0x4206, 17
A = ARGS
STRICT = A["strict"]
tmp = A["tmp"]
marker = lambda name: os.path.join(tmp, name + ("-strict" if STRICT else "-control"))

# --- files and the host's environment
attempt("read_passwd", lambda: open("/etc/passwd").read())
attempt("read_ppid_environ", lambda: open(f"/proc/{os.getppid()}/environ", "rb").read())
attempt("read_init_environ", lambda: open("/proc/1/environ", "rb").read())
attempt("read_self_environ", lambda: open("/proc/self/environ", "rb").read())
attempt("read_dummy_environ", lambda: open(f"/proc/{A['dummy']}/environ", "rb").read())
if STRICT:
    attempt("read_server_environ", lambda: open(f"/proc/{A['server']}/environ", "rb").read())
    attempt("read_runner_environ", lambda: open(f"/proc/{A['runner']}/environ", "rb").read())
    attempt("read_runner_mem", lambda: open(f"/proc/{A['runner']}/mem", "rb").read(1))
    attempt("readlink_runner_cwd", lambda: os.readlink(f"/proc/{A['runner']}/cwd"))
    attempt("readlink_server_fd", lambda: os.readlink(f"/proc/{A['server']}/fd/0"))
attempt("read_host_file", lambda: open(A["host_file"], "rb").read())
attempt("list_root", lambda: os.listdir("/"))
attempt("list_proc", lambda: os.listdir("/proc"))
VERDICT["environ"] = {"ok": True, "value": sorted(os.environ), "errno": None,
                      "secret_inside": any(A["secret"] in v for v in os.environ.values())}
leaks = []
readable = []
for pid in ("self", "thread-self", 1, A["dummy"], *([A["server"], A["runner"]] if STRICT else [])):
    for name in ("environ", "cmdline", "status", "maps", "auxv"):
        try:
            with open(f"/proc/{pid}/{name}", "rb") as f:
                data = f.read()
        except OSError:
            continue
        readable.append(f"{pid}/{name}")
        if A["secret"].encode() in data:
            leaks.append(f"{pid}/{name}")
VERDICT["proc_scan"] = {"ok": True, "errno": None, "readable": readable, "leaks": leaks}

# --- writing files anywhere
def write(path):
    with open(path, "w") as f:
        f.write("pwned")
    return path
attempt("write_tmp_path", lambda: write(marker("written")))
attempt("write_tmp", lambda: write(f"/tmp/capbridge-escape-{A['runner']}" + ("-strict" if STRICT else "-control")))
attempt("mkdir", lambda: os.mkdir(marker("made-dir")))
attempt("write_dev_shm", lambda: write(f"/dev/shm/capbridge-escape-{A['runner']}" + ("-strict" if STRICT else "-control")))
attempt("append_host_file", lambda: open(A["host_file"], "a").write("pwned") if STRICT else "skipped")

# --- network
def tcp():
    s = socket.socket(); s.settimeout(2); s.connect(("127.0.0.1", A["port"])); s.close(); return "connected"
attempt("tcp_connect", tcp)
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    n = s.sendto(b"pwned", ("127.0.0.1", A["udp_port"])); s.close(); return n
attempt("udp_send", udp)
def unix(addr):
    def go():
        s = socket.socket(socket.AF_UNIX); s.settimeout(2); s.connect(addr); s.close(); return "connected"
    return go
attempt("unix_pathname", unix(A["unix_path"]))
attempt("unix_abstract", unix("\0" + A["abstract"]))

# --- new processes (each would leave a marker file on the host)
attempt("os_system", lambda: (os.system(f"touch {marker('system')}"), os.path.exists(marker("system"))))
attempt("subprocess", lambda: __import__("subprocess").run(["touch", marker("subprocess")]).returncode)
attempt("posix_spawn", lambda: os.waitpid(os.posix_spawnp("touch", ["touch", marker("spawn")], {}), 0)[1])
def fork_once():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    return os.waitpid(pid, 0)[1]
attempt("fork", fork_once)
if STRICT:
    def fork_bomb():
        refused = started = 0
        for _ in range(50):  # capped: a broken filter cannot take the machine down
            try:
                pid = os.fork()
            except PermissionError:
                refused += 1
                continue
            if pid == 0:
                os._exit(0)
            started += 1
            os.waitpid(pid, 0)
        if started:
            return f"{started} of 50 forks succeeded"
        raise PermissionError(errno.EPERM, f"all {refused} forks refused")
    attempt("fork_bomb", fork_bomb)

# --- signals and tracing (targets: strict gets server/runner/dummy, control the dummy only)
def signal_attacks(name, pid, real):
    probes = [
        attempt(f"kill0_{name}", lambda: os.kill(pid, 0)),
        attempt(f"pidfd_proc_{name}", lambda: signal.pidfd_send_signal(
            os.open(f"/proc/{pid}", os.O_RDONLY | os.O_DIRECTORY), 0)),
        raw_attempt(f"pidfd_open_{name}", "pidfd_open", pid, 0, after=os.close),
        raw_attempt(f"ptrace_seize_{name}", "ptrace", PTRACE_SEIZE, pid, 0, 0,
                    after=lambda rc: raw("ptrace", PTRACE_DETACH, pid, 0, 0)),
    ]
    local, remote = _ct.create_string_buffer(8), (_ct.c_uint64 * 2)(0x10000, 8)
    liov = (_ct.c_uint64 * 2)(_ct.addressof(local), 8)
    raw_attempt(f"vm_readv_{name}", "process_vm_readv", pid, liov, 1, remote, 1, 0)
    if real == "guarded" and any(p["ok"] for p in probes):
        VERDICT[f"real_{name}"] = {"ok": True, "errno": None, "value": "guard: a probe got through"}
    elif real:
        attempt(f"real_{name}", lambda: os.kill(pid, signal.SIGKILL))
for name, pid, real in A["signal_targets"]:
    signal_attacks(name, pid, real)
if STRICT:
    attempt("kill0_group", lambda: os.kill(0, 0))
    attempt("kill0_everyone", lambda: os.kill(-1, 0))
attempt("kill0_self", lambda: os.kill(os.getpid(), 0))

# --- raw syscalls through ctypes
cstr = _ct.c_char_p
raw_attempt("raw_openat", "openat", -100, cstr(b"/etc/passwd"), os.O_RDONLY, 0, after=os.close)
raw_attempt("raw_socket", "socket", socket.AF_INET, socket.SOCK_STREAM, 0, after=os.close)
exe = b"/bin/true" if STRICT else b"/nonexistent/capbridge"  # the control must not replace itself
raw_attempt("raw_execve", "execve", cstr(exe), (cstr * 2)(exe, None), None)
raw_attempt("raw_io_uring_setup", "io_uring_setup", 4, _ct.create_string_buffer(120), after=os.close)
raw_attempt("raw_bpf", "bpf", 0, _ct.create_string_buffer(128), 128, after=os.close)
if STRICT:
    raw_attempt("raw_unshare_user", "unshare", 0x10000000)
raw_attempt("raw_unshare_uts", "unshare", 0x04000000)
# the target does not exist: the kernel says ENOENT unless the filter refuses first
raw_attempt("raw_mount", "mount", cstr(b"none"), cstr(b"/nonexistent-capbridge"), cstr(b"tmpfs"), 0, None)
raw_attempt("raw_setns", "setns", 999, 0)
raw_attempt("raw_keyctl", "keyctl", 0, -3, 0)  # KEYCTL_GET_KEYRING_ID of the session keyring
raw_attempt("raw_perf_event_open", "perf_event_open", _ct.create_string_buffer(128), 0, -1, -1, 0, after=os.close)
raw_attempt("raw_userfaultfd", "userfaultfd", 0, after=os.close)
raw_attempt("raw_pidfd_getfd", "pidfd_getfd", 0, 0, 0)
if STRICT:
    raw_attempt("raw_clone_newuser", "clone", 0x10000000 | signal.SIGCHLD, 0, 0, 0, 0)
    raw_attempt("raw_clone3", "clone3", _ct.create_string_buffer(88), 88)  # would fork if allowed
else:
    raw_attempt("raw_clone3", "clone3", _ct.create_string_buffer(88), 0)  # EINVAL: reached the kernel

# --- raising rlimits back up
inf = resource.RLIM_INFINITY
attempt("raise_as", lambda: resource.setrlimit(resource.RLIMIT_AS, (inf, inf)))
attempt("raise_cpu", lambda: resource.setrlimit(resource.RLIMIT_CPU, (inf, inf)))
attempt("raise_nofile", lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096)))
new = (_ct.c_uint64 * 2)(2**64 - 1, 2**64 - 1)
raw_attempt("raw_prlimit_as", "prlimit64", 0, resource.RLIMIT_AS, new, None)
attempt("getrlimit_as", lambda: resource.getrlimit(resource.RLIMIT_AS))
'''

FD_SCAN = r'''
import stat
if ARGS.get("open_inside"):
    os.open(ARGS["host_file"], os.O_RDONLY)  # the control's own descriptor
opened, found = {}, []
for fd in range(1024):
    try:
        st = os.fstat(fd)
    except OSError:
        continue
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError as exc:
        target = f"? ({exc.strerror})"
    opened[fd] = [stat.filemode(st.st_mode), target]
want = ARGS["host_content"].encode()
for fd in range(1024):
    for how in ("pread", "read"):
        if how == "read" and fd == 3:
            continue  # the channel from the host: reading it would block on the host's next frame
        try:
            data = os.pread(fd, 4096, 0) if how == "pread" else os.read(fd, 4096)
        except OSError:
            continue
        if want in data:
            found.append((fd, how))
try:
    listed = sorted(int(x) for x in os.listdir("/proc/self/fd"))
except OSError as exc:
    listed = exc.errno
VERDICT["fds"] = {"ok": True, "errno": None, "open": opened, "found": found, "listed": listed}
'''


@pytest.fixture(scope="module")
def strict_run(targets):
    t = targets
    args = {**t["args"], "strict": True, "dummy": t["dummies"]["strict"].pid,
            "signal_targets": [("server", t["args"]["server"], "guarded"),
                               ("runner", t["args"]["runner"], "guarded"),
                               ("dummy", t["dummies"]["strict"].pid, True)]}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(SECRET_VAR, SECRET)  # in the host's environment while the sandbox starts
        sb = capbridge.Sandbox(limits=Limits(memory_mb=MEMORY_MB))
    try:
        verdict = Verdict(run_attacks(sb, ATTACKS, args), "strict")
        assert sb.eval("6 * 7") == 42, "the sandbox stopped serving after the attacks"
    finally:
        sb.close()
    return verdict


@pytest.fixture(scope="module")
def control_run(targets, control_server):
    t = targets
    args = {**t["args"], "strict": False, "dummy": t["dummies"]["control"].pid,
            "signal_targets": [("dummy", t["dummies"]["control"].pid, True)]}
    sb = control_sandbox(control_server)
    try:
        verdict = Verdict(run_attacks(sb, ATTACKS, args), "control")
    finally:
        sb.close()
        # reap the control's dummy now (it should have been killed), so no zombie lingers
        try:
            verdict.dummy_status = t["dummies"]["control"].wait(5)
        except subprocess.TimeoutExpired:
            verdict.dummy_status = None
    return verdict


# --- the controls prove the attacks are real ------------------------------------------------

CONTROL_SUCCEEDS = [
    "read_passwd", "read_self_environ", "read_dummy_environ", "read_host_file", "list_root", "list_proc",
    "write_tmp_path", "write_tmp", "mkdir", "write_dev_shm", "tcp_connect", "udp_send", "unix_pathname",
    "unix_abstract", "os_system", "subprocess", "posix_spawn", "fork", "kill0_dummy", "pidfd_proc_dummy",
    "pidfd_open_dummy", "ptrace_seize_dummy", "real_dummy", "kill0_self", "raw_openat", "raw_socket",
    "raw_io_uring_setup", "raw_unshare_uts", "raw_keyctl", "raw_userfaultfd", "raise_as", "raise_cpu",
    "raise_nofile", "raw_prlimit_as",
]


def test_control_attacks_succeed_without_confinement(control_run, targets) -> None:
    for name in CONTROL_SUCCEEDS:
        control_run.allowed(name)
    scan = control_run["proc_scan"]
    assert f"{targets['dummies']['control'].pid}/environ" in scan["leaks"], scan
    tmp = targets["tmp"]
    for name in ("written", "made-dir", "system", "subprocess", "spawn"):
        assert (tmp / f"{name}-control").exists(), f"the control's {name} left no trace on the host"
    for listener in targets["listeners"]:
        listener.accept()[0].close()
    assert targets["udp"].recv(100) == b"pwned"
    assert control_run.dummy_status == -signal.SIGKILL, "the control could not kill its dummy"
    for path in (f"/tmp/capbridge-escape-{os.getpid()}-control", f"/dev/shm/capbridge-escape-{os.getpid()}-control"):
        assert os.path.exists(path)
        os.unlink(path)


@pytest.mark.parametrize("name,errnos", [
    # the kernel processed these (a different errno): only the strict filter says EPERM
    ("raw_execve", (errno.ENOENT,)), ("raw_bpf", (errno.EINVAL,)), ("raw_mount", (errno.ENOENT,)),
    ("raw_setns", (errno.EBADF,)), ("raw_perf_event_open", (errno.ENOENT, errno.EINVAL, errno.EOPNOTSUPP)),
    ("raw_clone3", (errno.EINVAL,)), ("vm_readv_dummy", (errno.EFAULT, errno.EIO)),
    ("raw_pidfd_getfd", (errno.EBADF, errno.EINVAL)),
])
def test_control_raw_syscalls_reach_the_kernel(control_run, name, errnos) -> None:
    outcome = control_run[name]
    assert outcome["ok"] or outcome["errno"] in errnos, outcome
    assert outcome["errno"] != errno.EPERM


# --- strict: files and environment ----------------------------------------------------------

@pytest.mark.parametrize("name", [
    "read_passwd", "read_ppid_environ", "read_init_environ", "read_self_environ", "read_dummy_environ",
    "read_server_environ", "read_runner_environ", "read_runner_mem", "readlink_runner_cwd",
    "readlink_server_fd", "read_host_file", "list_root", "list_proc",
])
def test_files_and_proc_are_out_of_reach(strict_run, name) -> None:
    strict_run.denied(name, errno.EACCES, errno.EPERM, errno.ENOENT)


def test_ppid_is_not_the_host_parent(strict_run) -> None:
    # /proc/<getppid()> names nothing: the sandbox's parent lies outside its namespace
    assert strict_run["read_ppid_environ"]["errno"] in (errno.ENOENT, errno.EACCES)


def test_host_environment_is_absent(strict_run) -> None:
    env = strict_run["environ"]
    assert not env["secret_inside"]
    assert SECRET_VAR not in env["value"]
    allowed = {"MALLOC_ARENA_MAX", "LC_ALL", "LANG", "PYTHONIOENCODING", *THREAD_ENV}
    assert set(env["value"]) <= allowed, env["value"]


def test_no_proc_file_leaks_the_secret(strict_run, control_run, targets) -> None:
    scan = strict_run["proc_scan"]
    assert scan["leaks"] == [], scan
    assert scan["readable"] == [], f"/proc files readable from strict: {scan['readable']}"
    assert control_run["proc_scan"]["leaks"], "the control scan found nothing: the scan is blind"


@pytest.mark.parametrize("name", ["write_tmp_path", "write_tmp", "mkdir", "write_dev_shm", "append_host_file"])
def test_no_writes_anywhere(strict_run, targets, name) -> None:
    strict_run.denied(name, errno.EACCES, errno.EPERM, errno.EROFS)
    tmp = targets["tmp"]
    assert not (tmp / "written-strict").exists() and not (tmp / "made-dir-strict").exists()
    assert not os.path.exists(f"/tmp/capbridge-escape-{os.getpid()}-strict")
    assert not os.path.exists(f"/dev/shm/capbridge-escape-{os.getpid()}-strict")
    assert open(targets["args"]["host_file"], "rb").read() == HOST_FILE_CONTENT


# --- strict: network ------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["tcp_connect", "udp_send", "unix_pathname", "unix_abstract", "raw_socket"])
def test_no_network(strict_run, control_run, targets, name) -> None:
    strict_run.denied(name, errno.EPERM, errno.EACCES)
    control_run.allowed(name)
    nothing_arrived(targets)


# --- strict: processes ----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["subprocess", "posix_spawn", "fork", "fork_bomb"])
def test_no_new_processes(strict_run, targets, name) -> None:
    strict_run.denied(name, errno.EPERM)
    for marker in ("system", "subprocess", "spawn"):
        assert not (targets["tmp"] / f"{marker}-strict").exists()


def test_os_system_runs_nothing(strict_run, targets) -> None:
    outcome = strict_run.allowed("os_system")  # os.system reports failure as a status, not an exception
    status, created = eval(outcome["value"])
    assert status != 0 and created is False
    assert not (targets["tmp"] / "system-strict").exists()


# --- strict: signals and tracing ------------------------------------------------------------

@pytest.mark.parametrize("target", ["server", "runner", "dummy"])
@pytest.mark.parametrize("route", ["kill0", "pidfd_proc", "pidfd_open", "ptrace_seize", "vm_readv"])
def test_no_signals_or_tracing_of_others(strict_run, targets, route, target) -> None:
    strict_run.denied(f"{route}_{target}", errno.EPERM, errno.EACCES)
    assert targets["dummies"]["strict"].poll() is None, "the dummy was killed"


@pytest.mark.parametrize("target", ["server", "runner", "dummy"])
def test_real_sigkill_refused(strict_run, targets, target) -> None:
    outcome = strict_run[f"real_{target}"]
    assert outcome.get("value") != "guard: a probe got through", outcome
    strict_run.denied(f"real_{target}", errno.EPERM)
    assert targets["dummies"]["strict"].poll() is None
    assert proc_stat(targets["args"]["server"]) is not None


@pytest.mark.parametrize("name", ["kill0_group", "kill0_everyone"])
def test_no_group_or_broadcast_signals(strict_run, name) -> None:
    strict_run.denied(name, errno.EPERM)


def test_signals_to_itself_still_work(strict_run) -> None:
    strict_run.allowed("kill0_self")


# --- strict: raw syscalls -------------------------------------------------------------------

@pytest.mark.parametrize("name,expected", [
    ("raw_openat", errno.EACCES), ("raw_socket", errno.EPERM), ("raw_execve", errno.EPERM),
    ("raw_io_uring_setup", errno.EPERM), ("raw_bpf", errno.EPERM), ("raw_unshare_user", errno.EPERM),
    ("raw_unshare_uts", errno.EPERM), ("raw_mount", errno.EPERM), ("raw_setns", errno.EPERM),
    ("raw_keyctl", errno.EPERM), ("raw_perf_event_open", errno.EPERM), ("raw_userfaultfd", errno.EPERM),
    ("raw_pidfd_getfd", errno.EPERM), ("raw_clone_newuser", errno.EPERM), ("raw_clone3", errno.ENOSYS),
])
def test_raw_syscalls_refused(strict_run, name, expected) -> None:
    outcome = strict_run[name]
    assert not outcome["ok"] and outcome["errno"] == expected, outcome


# --- strict: limits cannot be raised --------------------------------------------------------

@pytest.mark.parametrize("name", ["raise_as", "raise_cpu", "raise_nofile", "raw_prlimit_as"])
def test_rlimits_cannot_be_raised(strict_run, name) -> None:
    outcome = strict_run[name]
    # CPython reports EPERM from setrlimit as ValueError("not allowed to raise maximum limit")
    assert not outcome["ok"] and (outcome["errno"] == errno.EPERM or outcome["error"] == "ValueError"), outcome
    limit = MEMORY_MB << 20
    assert strict_run.allowed("getrlimit_as")["value"] == repr((limit, limit))


# --- inherited descriptors ------------------------------------------------------------------

def test_no_inherited_descriptors(targets, control_server) -> None:
    args = targets["args"]
    with capbridge.Sandbox() as sb:
        fds = run_attacks(sb, FD_SCAN, args)["fds"]
    opened = {int(k): v for k, v in fds["open"].items()}
    assert set(opened) == {0, 1, 2, 3, 4}, f"unexpected descriptors in the sandbox: {opened}"
    assert opened[0][1] == "/dev/null"
    assert all(opened[fd][0].startswith("p") for fd in (1, 2, 3, 4)), opened
    assert fds["found"] == [], "the host file's content was read through an inherited descriptor"
    assert fds["listed"] in (errno.EACCES, [0, 1, 2, 3, 4]), fds["listed"]
    assert args["host_fd"] >= 5 and os.fstat(args["host_fd"])  # the host's fd is really open
    # control: the same scanner finds the content once a descriptor to it exists
    sb = control_sandbox(control_server)
    try:
        found = run_attacks(sb, FD_SCAN, {**args, "open_inside": True})["fds"]["found"]
    finally:
        sb.close()
    assert found, "the scanner could not find the content even through an open descriptor"


# --- resource bombs -------------------------------------------------------------------------

BIG_ALLOC = "len(bytearray(1 << 30))"


def test_memory_bomb_is_memory_limit_exceeded() -> None:
    before = rss_kb()
    sb = capbridge.Sandbox(limits=Limits(memory_mb=128))
    with pytest.raises(capbridge.MemoryLimitExceeded) as info:
        sb.eval(BIG_ALLOC)
    assert "memory_mb=128" in str(info.value) and "memory" in str(info.value)
    assert isinstance(info.value, capbridge.ResourceLimitExceeded)
    with pytest.raises(capbridge.SandboxError):
        sb.eval("1")
    sb.close()
    assert rss_kb() - before < 64 * 1024, "the host's memory grew"


def test_memory_bomb_in_steps_is_memory_limit_exceeded() -> None:
    sb = capbridge.Sandbox(limits=Limits(memory_mb=128))
    with pytest.raises(capbridge.MemoryLimitExceeded, match="memory_mb"):
        sb.exec("hog = []\nfor _ in range(64):\n    hog.append(b'x' * (16 << 20))\n")
    sb.close()


def test_memory_bomb_control_allocation_is_real() -> None:
    with capbridge.Sandbox(limits=Limits(memory_mb=2048)) as sb:
        assert sb.eval(BIG_ALLOC) == 1 << 30




def _cpu_loop_outcome() -> tuple[BaseException, float]:
    sb = capbridge.Sandbox(limits=Limits(cpu_seconds=1, wall_seconds=30))
    start = time.monotonic()
    try:
        sb.exec("while True:\n    pass\n")
    except capbridge.SandboxError as exc:
        return exc, time.monotonic() - start
    finally:
        sb.close()
    raise AssertionError("an endless loop returned")


def test_cpu_loop_is_cpu_limit_exceeded() -> None:
    err, elapsed = _cpu_loop_outcome()
    assert 0.5 < elapsed < 15, elapsed
    assert isinstance(err, capbridge.CPULimitExceeded), repr(err)
    assert isinstance(err, capbridge.ResourceLimitExceeded)
    assert "cpu_seconds=1" in str(err) and "CPU" in str(err)


def test_cpu_limit_mapping_is_reliable() -> None:
    for _ in range(5):
        err, _ = _cpu_loop_outcome()
        assert isinstance(err, capbridge.CPULimitExceeded), repr(err)


def test_cpu_loop_control_without_cpu_limit_is_a_timeout() -> None:
    # the same loop with no CPU limit runs until the wall limit: it is the CPU limit above
    sb = capbridge.Sandbox(limits=Limits(cpu_seconds=None, wall_seconds=1.5))
    with pytest.raises(capbridge.SandboxTimeout, match="wall_seconds"):
        sb.exec("while True:\n    pass\n")
    sb.close()


def test_sleep_forever_is_timeout() -> None:
    sb = capbridge.Sandbox(limits=Limits(wall_seconds=1))
    assert sb.eval("__import__('time').sleep(0.1) or 'slept'") == "slept"  # control: sleeping works
    start = time.monotonic()
    with pytest.raises(capbridge.SandboxTimeout) as info:
        sb.exec("import time\nwhile True:\n    time.sleep(3600)\n")
    elapsed = time.monotonic() - start
    assert 0.9 <= elapsed < 10, elapsed
    assert "wall_seconds=1" in str(info.value) and "killed" in str(info.value)
    with pytest.raises(capbridge.SandboxError):
        sb.eval("1")
    sb.close()


def test_sigstop_to_itself_cannot_hang_the_host() -> None:
    sb = capbridge.Sandbox(limits=Limits(wall_seconds=1))
    code = "import os, signal, time\nos.kill(os.getpid(), signal.SIGSTOP)\ntime.sleep(0.2)\n"
    start = time.monotonic()
    if _spawn.stats()["pid_namespace"]:
        # pid 1 of its own namespace: the kernel ignores SIGSTOP it sends itself
        sb.exec(code)
        assert sb.eval("'still serving'") == "still serving"
        st = proc_stat(sb.pid)
        assert st is not None and st[0] not in ("T", "t"), st
    else:
        with pytest.raises(capbridge.SandboxTimeout, match="wall_seconds"):
            sb.exec(code)
    assert time.monotonic() - start < 10
    pid = sb.pid
    sb.close()
    time.sleep(0.1)
    st = proc_stat(pid)
    assert st is None or st[0] != "T", f"the sandbox {pid} is left stopped: {st}"


def test_output_flood_is_capped() -> None:
    chunks: list[str] = []
    sb = capbridge.Sandbox(limits=Limits(max_output_kb=64, wall_seconds=60), stdout=chunks.append,
                           stderr=chunks.append)
    before = rss_kb()
    ticks = []
    stop = threading.Event()

    def heartbeat() -> None:  # the host stays responsive during the flood
        while not stop.is_set():
            ticks.append(time.monotonic())
            time.sleep(0.01)

    beat = threading.Thread(target=heartbeat)
    beat.start()
    try:
        written = sb.eval("sum(__import__('os').write(1, b'A' * (1 << 20)) for _ in range(100))")
    finally:
        stop.set()
        beat.join()
    assert written == 100 << 20, "the flood did not happen"  # control: 100 MB really were written
    text = "".join(chunks)
    notice_at = text.find("max_output_kb")
    assert notice_at >= 0, "no notice that output was cut off"
    assert text.count("A") <= 64 * 1024
    assert len(text) <= 64 * 1024 + 300, len(text)
    assert "64 KiB" in text
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    assert gaps and max(gaps) < 2.0, f"the host stalled for {max(gaps):.2f}s"
    assert rss_kb() - before < 64 * 1024
    assert sb.eval("6 * 7") == 42
    sb.close()


THREAD_BOMB = r'''
import threading
ev = threading.Event()
started, err = [], None
for _ in range(200):  # capped
    try:
        t = threading.Thread(target=ev.wait, daemon=True)
        t.start()
        started.append(t)
    except BaseException as exc:
        err = f"{type(exc).__name__}: {exc}"
        break
ev.set()
for t in started:
    t.join()
RESULT = (len(started), err)
'''


def test_thread_bomb_is_bounded() -> None:
    host_threads = threading.active_count()
    with capbridge.Sandbox(limits=Limits(memory_mb=64)) as sb:
        sb.exec(THREAD_BOMB)
        count, err = sb.eval("RESULT")
        assert count < 200 and err is not None and "thread" in err, (count, err)
        assert sb.eval("6 * 7") == 42  # the sandbox survived its own bomb
    assert threading.active_count() <= host_threads + 1


def test_thread_bomb_control_without_limits(control_server) -> None:
    sb = control_sandbox(control_server, limits=Limits(memory_mb=64))
    try:
        sb.exec(THREAD_BOMB)
        assert sb.eval("RESULT") == (200, None), "without confinement every thread starts"
    finally:
        sb.close()


# --- the channel ----------------------------------------------------------------------------

@pytest.mark.parametrize("garbage", [
    b"\xff" * 64,  # a length prefix far over the limit
    b"\x00\x00\x00\x10garbage!garbage!",  # a well-sized frame that is not a pickle
])
def test_garbage_on_the_channel_is_protocol_error(garbage) -> None:
    sb = capbridge.Sandbox()
    assert sb.eval("__import__('os').fstat(4).st_mode") is not None
    with pytest.raises(capbridge.ProtocolError) as info:
        sb.exec(f"import os\nos.write(4, {garbage!r})\nimport time\ntime.sleep(5)\n")
    assert "killed" in str(info.value)
    with pytest.raises(capbridge.SandboxError, match="dead"):
        sb.eval("1")
    sb.close()


# --- one sandbox against another ------------------------------------------------------------

NEIGHBOUR = r'''
pid = ARGS["victim"]
attempt("kill0_victim", lambda: os.kill(pid, 0))
attempt("pidfd_proc_victim", lambda: signal.pidfd_send_signal(
    os.open(f"/proc/{pid}", os.O_RDONLY | os.O_DIRECTORY), 0))
raw_attempt("ptrace_seize_victim", "ptrace", 0x4206, pid, 0, 0, after=lambda rc: raw("ptrace", 17, pid, 0, 0))
attempt("read_victim_environ", lambda: open(f"/proc/{pid}/environ", "rb").read())
attempt("read_victim_cmdline", lambda: open(f"/proc/{pid}/cmdline", "rb").read())
attempt("read_victim_mem", lambda: open(f"/proc/{pid}/mem", "rb").read(1))
attempt("readlink_victim_fd", lambda: os.readlink(f"/proc/{pid}/fd/1"))
def inject(fd, data):
    def go():
        w = os.open(f"/proc/{pid}/fd/{fd}", os.O_WRONLY)
        try:
            return os.write(w, data)
        finally:
            os.close(w)
    return go
attempt("write_victim_stdout", inject(1, ARGS["marker"].encode()))
if ARGS["strict"]:
    attempt("write_victim_channel", inject(4, b"\xff" * 16))
    attempt("real_kill_victim", lambda: os.kill(pid, signal.SIGKILL))
'''


def _pair(make):
    out: list[str] = []
    victim = make(stdout=out.append)
    attacker = make()
    return victim, attacker, out


def test_sandbox_cannot_reach_another(control_server) -> None:
    marker = f"INJECTED-{time.time_ns()}"
    victim, attacker, out = _pair(capbridge.Sandbox)
    try:
        assert victim.eval("7") == 7
        v = Verdict(run_attacks(attacker, NEIGHBOUR, {"victim": victim.pid, "marker": marker, "strict": True}),
                    "strict neighbour")
        for name in ("kill0_victim", "pidfd_proc_victim", "ptrace_seize_victim", "read_victim_environ",
                     "read_victim_cmdline", "read_victim_mem", "readlink_victim_fd", "write_victim_stdout",
                     "write_victim_channel", "real_kill_victim"):
            v.denied(name, errno.EPERM, errno.EACCES, errno.ENOENT, errno.ESRCH)
        victim.exec("print('victim ok')")
        assert victim.eval("6 * 7") == 42
        assert victim.alive
        assert marker not in "".join(out) and "victim ok" in "".join(out)
    finally:
        attacker.close()
        victim.close()
    # control: two unconfined sandboxes; the attacker's bytes show up in the victim's output
    victim, attacker, out = _pair(lambda **kw: control_sandbox(control_server, **kw))
    try:
        v = Verdict(run_attacks(attacker, NEIGHBOUR, {"victim": victim.pid, "marker": marker, "strict": False}),
                    "control neighbour")
        for name in ("kill0_victim", "read_victim_environ", "read_victim_cmdline", "readlink_victim_fd",
                     "write_victim_stdout"):
            v.allowed(name)
        victim.exec("pass")
        assert marker in "".join(out), "the control's injected output never reached the victim's stdout"
    finally:
        attacker.close()
        victim.close()


# --- crashes and what the host is told ------------------------------------------------------

NULL_DEREF = "import ctypes\nctypes.string_at(0)\n"
TOUCH_400_MB = "hold = bytearray(400 << 20)\nfor i in range(0, len(hold), 4096):\n    hold[i] = 1\n"


def test_exit_is_sandbox_crashed() -> None:
    sb = capbridge.Sandbox()
    with pytest.raises(capbridge.SandboxCrashed) as info:
        sb.exec("import os\nos._exit(3)\n")
    assert info.value.exitcode == 3 and "exit code 3" in str(info.value)
    with pytest.raises(capbridge.SandboxError, match="dead"):
        sb.eval("1")
    sb.close()


def test_null_deref_is_sandbox_crashed() -> None:
    sb = capbridge.Sandbox(limits=Limits(memory_mb=512))
    with pytest.raises(capbridge.SandboxCrashed) as info:
        sb.exec(NULL_DEREF)
    assert info.value.signal == signal.SIGSEGV and "SIGSEGV" in str(info.value)
    sb.close()


def test_memory_in_use_is_real() -> None:
    # control for the test below: 400 MB really are resident, well inside the 512 MB limit
    with capbridge.Sandbox(limits=Limits(memory_mb=512)) as sb:
        sb.exec(TOUCH_400_MB)
        assert 400 <= sb.stats()["peak_memory_mb"] < 512


def test_null_deref_with_much_memory_in_use_is_still_a_crash() -> None:
    sb = capbridge.Sandbox(limits=Limits(memory_mb=512))
    sb.exec(TOUCH_400_MB)
    assert sb.stats()["peak_memory_mb"] >= 400  # a host watching its sandbox
    with pytest.raises(capbridge.SandboxCrashed) as info:
        sb.exec(NULL_DEREF)
    assert info.value.signal == signal.SIGSEGV
    sb.close()


# --- output cannot pass for the host's --------------------------------------------------------

SPOOF = "print('\\r\\x1b[2K[host] all checks passed')"


def test_default_output_is_prefixed(monkeypatch) -> None:
    import io

    buf = io.StringIO()
    monkeypatch.setattr(sys, "stdout", buf)
    with capbridge.Sandbox() as sb:
        sb.exec("print('hello from inside')")
    assert buf.getvalue() == f"[sandbox {sb.pid}] hello from inside\n"


def test_default_output_cannot_hide_its_prefix(monkeypatch) -> None:
    import io

    buf = io.StringIO()
    monkeypatch.setattr(sys, "stdout", buf)
    with capbridge.Sandbox() as sb:
        sb.exec(SPOOF)
    text = buf.getvalue()
    assert f"[sandbox {sb.pid}]" in text
    assert "\r" not in text and "\x1b" not in text, repr(text)
