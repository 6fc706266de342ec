"""Real attacks against a really locked-down process (run as a subprocess).

Each attack is also run once with ``confinement="none"`` as a control: there the same
code must succeed, which proves the attack was real and the verdicts can fail.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from listeners import Listeners, nothing_arrived  # noqa: E402
from lockdown_harness import run_attack  # noqa: E402

from sandbox_vm._config import SandboxConfig  # noqa: E402
from sandbox_vm._lockdown import LockdownReport, LayerState, build_plan  # noqa: E402

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux confinement only")

MEMORY_MB = 256
DENIED = (errno.EPERM, errno.EACCES)

ATTACKS = '''
import resource, signal, socket, threading, time
dummy, port, udp_port, unix_path, abstract, tmp_file = (ARGS[k] for k in
    ("dummy", "port", "udp_port", "unix_path", "abstract", "tmp_file"))
destructive = ARGS["destructive"]

# files
attempt("read_passwd", lambda: open("/etc/passwd").read())
attempt("read_parent_environ", lambda: open(f"/proc/{os.getppid()}/environ", "rb").read())
attempt("write_tmp", lambda: open(tmp_file, "w").write("pwned"))
attempt("list_root", lambda: os.listdir("/"))

# network
def tcp():
    s = socket.socket(); s.settimeout(2); s.connect(("127.0.0.1", port)); return "connected"
attempt("tcp_connect", tcp)
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); return s.sendto(b"pwned", ("127.0.0.1", udp_port))
attempt("udp_send", udp)
def unix(addr):
    def go():
        s = socket.socket(socket.AF_UNIX); s.settimeout(2); s.connect(addr); return "connected"
    return go
attempt("unix_pathname", unix(unix_path))
attempt("unix_abstract", unix("\\0" + abstract))

# processes
attempt("subprocess", lambda: __import__("subprocess").run(["/bin/true"]).returncode)
attempt("posix_spawn", lambda: os.waitpid(os.posix_spawn("/bin/true", ["true"], {}), 0))
def fork_once():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    return os.waitpid(pid, 0)
attempt("fork", fork_once)
def fork_loop():
    refused = 0
    for _ in range(20):  # bounded, so a broken filter cannot bomb the machine
        try:
            fork_once()
        except PermissionError:
            refused += 1
    if refused != 20:
        raise AssertionError(f"only {refused} of 20 forks refused")
    raise PermissionError(errno.EPERM, "all 20 forks refused")
attempt("fork_loop", fork_loop)
if destructive:
    VERDICT["system"] = {"ok": True, "value": os.system("/bin/true")}

# signals and tracing
attempt("kill_parent_probe", lambda: os.kill(os.getppid(), 0))
attempt("kill_self_probe", lambda: os.kill(os.getpid(), 0))
attempt("kill_group_probe", lambda: os.kill(0, 0))
attempt("kill_all_probe", lambda: os.kill(-1, 0))
if destructive:
    attempt("kill_dummy", lambda: os.kill(dummy, signal.SIGTERM))
    rc, err = raw(101, 16, dummy, 0, 0)  # ptrace(PTRACE_ATTACH, dummy)
    VERDICT["ptrace_dummy"] = {"ok": rc == 0, "errno": err}

# raw syscalls (x86_64 numbers)
def sys_result(name, rc, err):
    VERDICT[name] = {"ok": rc >= 0, "errno": err, "value": rc}
path = ctypes.c_char_p(b"/etc/passwd")
sys_result("raw_openat", *raw(257, -100, path, os.O_RDONLY, 0))
sys_result("raw_socket", *raw(41, socket.AF_INET, socket.SOCK_STREAM, 0))
if destructive:
    argv = (ctypes.c_char_p * 2)(b"/bin/true", None)
    sys_result("raw_execve", *raw(59, ctypes.c_char_p(b"/bin/true"), argv, None))
params = ctypes.create_string_buffer(120)
sys_result("raw_io_uring_setup", *raw(425, 4, params))
sys_result("raw_bpf", *raw(321, 0, ctypes.create_string_buffer(128), 128))
sys_result("raw_unshare_user", *raw(272, 0x10000000))
sys_result("raw_mount", *raw(165, ctypes.c_char_p(b"none"), ctypes.c_char_p(b"/tmp"), ctypes.c_char_p(b"tmpfs"), 0, None))
sys_result("raw_userfaultfd", *raw(323, 0))
rc, err = raw(56, 0x10000000 | signal.SIGCHLD, 0, 0, 0, 0)  # clone(CLONE_NEWUSER)
if rc == 0:
    os._exit(0)
sys_result("raw_clone_newuser", rc, err)
sys_result("raw_clone3", *raw(435, ctypes.create_string_buffer(88), 88))

# limits
inf = resource.RLIM_INFINITY
attempt("raise_as", lambda: resource.setrlimit(resource.RLIMIT_AS, (inf, inf)))
attempt("raise_cpu", lambda: resource.setrlimit(resource.RLIMIT_CPU, (inf, inf)))
new = (ctypes.c_uint64 * 2)(inf & (2**64 - 1), inf & (2**64 - 1))
sys_result("raw_prlimit_as", *raw(302, 0, resource.RLIMIT_AS, new, None))
attempt("getrlimit_as", lambda: resource.getrlimit(resource.RLIMIT_AS))
attempt("allocate_too_much", lambda: len(bytearray(2 * ARGS["memory_mb"] * 1024 * 1024)))

# what must keep working
def threads():
    out = []
    workers = [threading.Thread(target=out.append, args=(i,)) for i in range(4)]
    for w in workers: w.start()
    for w in workers: w.join()
    return sorted(out)
attempt("threads", threads)
attempt("import_json", lambda: __import__("json").dumps({"a": 1}))
attempt("import_decimal", lambda: str(__import__("decimal").Decimal(1) / 3))
attempt("import_sqlite3", lambda: __import__("sqlite3").connect(":memory:").execute("select 41+1").fetchone())
attempt("import_zlib", lambda: len(__import__("zlib").compress(b"x" * 1000)))
attempt("import_ctypes", lambda: __import__("ctypes").sizeof(__import__("ctypes").c_long))
attempt("import_allowed", lambda: __import__("pluggy").__name__)
attempt("import_denied", lambda: __import__("pytest"))
attempt("urandom", lambda: len(os.urandom(16)))
attempt("pipe", lambda: [os.close(fd) for fd in os.pipe()])
'''


@pytest.fixture(scope="module")
def targets(tmp_path_factory):
    """Things outside the sandbox to aim at: a dummy process and listening sockets."""
    tmp = tmp_path_factory.mktemp("targets")
    dummy = subprocess.Popen(["sleep", "30"])
    net = Listeners(tmp, "lockdown-test")
    args = {"dummy": dummy.pid, **net.args, "tmp_file": str(tmp / "written"), "memory_mb": MEMORY_MB}
    yield args, dummy, net.streams, net.udp
    dummy.kill()
    dummy.wait(5)
    net.close()


_nothing_arrived = nothing_arrived


@pytest.fixture(scope="module")
def strict(targets):
    args, dummy, listeners, udp = targets
    config = {"confinement": "strict", "memory_mb": MEMORY_MB, "cpu_seconds": 30, "allow_imports": ["pluggy"]}
    result = run_attack(ATTACKS, config=config, args={**args, "destructive": True})
    assert "_report" in result.verdict, f"lockdown failed: {result.verdict} {result.stderr[-2000:]}"
    return result


@pytest.fixture(scope="module")
def control(targets):
    """The same attacks without confinement (nothing destructive)."""
    args, dummy, listeners, udp = targets
    result = run_attack(ATTACKS, config={"confinement": "none"}, args={**args, "destructive": False})
    return result


# --- the plan ----------------------------------------------------------------------------

def test_plan_order_and_requirements() -> None:
    plan = build_plan(SandboxConfig(confinement="strict", allow_imports=("json",)))
    assert [s.name for s in plan] == ["close_fds", "namespaces", "rlimits", "landlock", "seccomp"]
    assert {s.name: s.required for s in plan} == {
        "close_fds": True, "namespaces": False, "rlimits": True, "landlock": True, "seccomp": True}
    assert plan[3].param("allow_imports") == ("json",)
    assert plan[2].param("memory_mb") == 512


def test_plan_best_effort_requires_nothing_but_closing_fds() -> None:
    plan = build_plan(SandboxConfig(confinement="best-effort"))
    assert [s.name for s in plan][-1] == "seccomp"
    assert [s.name for s in plan if s.required] == ["close_fds"]


def test_plan_none_only_closes_fds() -> None:
    assert [s.name for s in build_plan(SandboxConfig(confinement="none"))] == ["close_fds"]


def test_report_missing() -> None:
    report = LockdownReport((LayerState("rlimits", True), LayerState("landlock", False, "x", "enable it")))
    assert report.missing() == ["landlock"]
    assert "MISSING" in str(report) and "enable it" in str(report)


# --- the control run proves the attacks are real ------------------------------------------

def test_control_attacks_succeed_without_confinement(control, targets) -> None:
    assert set(control.verdict["_report"]["missing"]) == {"namespaces", "rlimits", "landlock", "seccomp"}
    for name in ("read_passwd", "write_tmp", "tcp_connect", "udp_send", "unix_pathname", "unix_abstract",
                 "fork", "posix_spawn", "subprocess", "kill_parent_probe", "import_denied"):
        control.allowed(name)
    assert control["raw_socket"]["ok"] and control["raw_openat"]["ok"]
    os.unlink(targets[0]["tmp_file"])
    for listener in targets[2]:
        listener.accept()[0].close()
    targets[3].recv(100)


# --- strict -------------------------------------------------------------------------------

def test_strict_has_every_layer(strict) -> None:
    assert strict.verdict["_report"]["missing"] == [], strict.verdict["_report"]["text"]


@pytest.mark.parametrize("attack", ["read_passwd", "read_parent_environ", "write_tmp", "list_root"])
def test_files_are_out_of_reach(strict, targets, attack) -> None:
    strict.denied(attack, *DENIED)
    assert not os.path.exists(targets[0]["tmp_file"])


@pytest.mark.parametrize("attack", ["tcp_connect", "udp_send", "unix_pathname", "unix_abstract"])
def test_network_is_out_of_reach(strict, targets, attack) -> None:
    strict.denied(attack, *DENIED)
    _nothing_arrived(targets[2], targets[3])


@pytest.mark.parametrize("attack", ["subprocess", "posix_spawn", "fork", "fork_loop"])
def test_no_new_processes(strict, attack) -> None:
    strict.denied(attack, errno.EPERM)


def test_os_system_fails(strict) -> None:
    assert strict["system"]["value"] != 0


@pytest.mark.parametrize("attack", ["kill_parent_probe", "kill_group_probe", "kill_all_probe", "kill_dummy"])
def test_no_signals_to_others(strict, targets, attack) -> None:
    strict.denied(attack, errno.EPERM)
    assert targets[1].poll() is None, "the dummy process was killed"


def test_signals_to_itself_work(strict) -> None:
    strict.allowed("kill_self_probe")


def test_no_ptrace(strict, targets) -> None:
    assert strict["ptrace_dummy"] == {"ok": False, "errno": errno.EPERM}
    assert targets[1].poll() is None


@pytest.mark.parametrize("attack,expected", [
    ("raw_openat", errno.EACCES), ("raw_socket", errno.EPERM), ("raw_execve", errno.EPERM),
    ("raw_io_uring_setup", errno.EPERM), ("raw_bpf", errno.EPERM), ("raw_unshare_user", errno.EPERM),
    ("raw_mount", errno.EPERM), ("raw_userfaultfd", errno.EPERM), ("raw_clone_newuser", errno.EPERM),
    ("raw_clone3", errno.ENOSYS), ("raw_prlimit_as", errno.EPERM),
])
def test_raw_syscalls_are_refused(strict, attack, expected) -> None:
    if os.uname().machine != "x86_64":
        pytest.skip("raw syscall numbers in this test are x86_64's")
    outcome = strict[attack]
    assert not outcome["ok"] and outcome["errno"] == expected, outcome


def test_limits_cannot_be_raised(strict) -> None:
    for attack in ("raise_as", "raise_cpu"):
        outcome = strict[attack]
        # CPython turns EPERM from setrlimit into ValueError("not allowed to raise maximum limit")
        assert not outcome["ok"] and outcome["error"] in ("ValueError", "PermissionError"), outcome
    assert strict.allowed("getrlimit_as")["value"] == repr((MEMORY_MB << 20, MEMORY_MB << 20))
    assert strict["allocate_too_much"]["error"] == "MemoryError"


@pytest.mark.parametrize("attack", ["threads", "import_json", "import_decimal", "import_sqlite3", "import_zlib",
                                    "import_ctypes", "import_allowed", "urandom", "pipe"])
def test_ordinary_python_still_works(strict, attack) -> None:
    strict.allowed(attack)


def test_threads_ran(strict) -> None:
    assert strict["threads"]["value"] == "[0, 1, 2, 3]"


def test_import_outside_allow_imports_fails(strict) -> None:
    outcome = strict["import_denied"]
    assert outcome["error"] == "ModuleNotFoundError" and "allow_imports" in outcome["message"]


# --- kills, limits and failure paths (separate processes) ---------------------------------

def test_cpu_limit_signals_sigxcpu() -> None:
    result = run_attack("while True: pass", config={"confinement": "strict", "cpu_seconds": 1}, timeout=20)
    assert result.returncode == -signal.SIGXCPU, (result.returncode, result.stderr[-2000:])


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="x32 exists only on x86_64")
def test_x32_syscall_kills_the_process() -> None:
    result = run_attack('raw(0x40000000 | 39)\nVERDICT["survived"] = True', config={"confinement": "strict"})
    assert result.returncode == -signal.SIGSYS, (result.returncode, result.verdict)


BLOCK_LANDLOCK = '''
# A filter that denies landlock_* and seccomp (as a hostile container runtime might)
from sandbox_vm import _policy, _seccomp
policy = _policy.build_policy(os.getpid())
groups = tuple(_policy.Group(g.name, g.reason, tuple(r for r in g.rules if r.syscall != "prlimit64"))
               for g in policy.groups)
let_through = _policy.Group("test", "rlimits and namespaces still work",
                            (_policy.Rule("prlimit64", "test"), _policy.Rule("unshare", "test")))
_seccomp.install(_policy.Policy(policy.arch, policy.pid, groups + (let_through,), policy.default))
'''


def test_strict_fails_naming_the_missing_layer() -> None:
    result = run_attack("", config={"confinement": "strict"}, pre=BLOCK_LANDLOCK)
    failed = result["_failed"]
    assert failed["step"] == "landlock" and failed["errno"] == errno.EPERM, failed
    assert "no_new_privs" in failed["hint"] or "seccomp" in failed["hint"]


def test_best_effort_records_what_is_missing() -> None:
    code = 'attempt("read_passwd", lambda: open("/etc/passwd").read())'
    result = run_attack(code, config={"confinement": "best-effort"}, pre=BLOCK_LANDLOCK)
    assert result["_report"]["missing"] == ["landlock", "seccomp"], result["_report"]["text"]
    result.allowed("read_passwd")  # nothing pretends: without Landlock, files are readable


# --- probe (capbridge check) ----------------------------------------------------------------

PROBE = '''
from sandbox_vm._probe import probe, format_table
statuses = probe()
VERDICT["layers"] = {s.layer: [s.available, s.used_by_strict, s.detail, s.why_not] for s in statuses}
VERDICT["table"] = format_table(statuses)
attempt("read_passwd_after_probe", lambda: len(open("/etc/passwd").read()))
attempt("socket_after_probe", lambda: __import__("socket").socket().close())
'''


def test_probe_reports_every_layer_and_confines_nothing() -> None:
    result = run_attack(PROBE, config={}, lock=False)
    layers = result["layers"]
    assert {"fresh interpreter", "namespace: user", "namespace: net", "namespace: pid", "rlimits", "landlock",
            "seccomp"} <= set(layers)
    assert layers["landlock"][1] == "required" and layers["namespace: net"][1] == "if available"
    for name, (available, _, detail, why_not) in layers.items():
        assert available or why_not, f"{name} unavailable without a reason"
    if layers["landlock"][0]:
        assert layers["landlock"][2].startswith("ABI ")
    result.allowed("read_passwd_after_probe")
    result.allowed("socket_after_probe")
    assert "strict confinement:" in result["table"]


def test_format_table_says_why_not() -> None:
    from sandbox_vm._probe import LayerStatus, format_table

    table = format_table([
        LayerStatus("rlimits", True, "required", "AS, CPU"),
        LayerStatus("landlock", False, "required", "EOPNOTSUPP", "add 'landlock' to the lsm= boot parameter"),
    ])
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["layer", "available", "strict"]
    assert "landlock" in table and "NO" in table and "lsm=" in table
    assert lines[-1] == "strict confinement: UNAVAILABLE (missing landlock)"


def test_filter_compiled_ahead_is_the_one_built_at_lockdown() -> None:
    from sandbox_vm import _lockdown, _policy, _seccomp

    _lockdown.compile_seccomp(1)
    policy, program = _lockdown._COMPILED.pop(1)
    assert policy == _policy.build_policy(1)
    assert program == _seccomp.pack(_seccomp.compile_policy(_policy.build_policy(1)))
