#!/usr/bin/env python3
"""capbridge benchmarks: everything in one run, printed as tables with ratios.

    python benchmarks/run.py            # about 2-3 minutes
    python benchmarks/run.py --quick    # about 30 seconds
    python benchmarks/run.py --only latency,start --many 200

    python benchmarks/run.py --plots docs/_static/bench   # also draw the PNG plots

Sections: 1 call latency beside a hand-written pickle loop, RPyC, Pyro5 and
multiprocessing.managers; 2 bulk bytes; 3 sandbox start (cold / warm / pooled) and
sandbox cycles (fresh / pooled); 4 memory per idle sandbox; 5 many concurrent
sandboxes; 6 latency with confinement='strict' vs 'none'; 7 NPC ticks (50 sandboxes,
one after another and gathered); 8 calls into many busy sandboxes beside a
hand-written fan-out. See benchmarks/README.md for the method.
"""

from __future__ import annotations

import argparse
import array
import gc
import os
import platform
import resource
import secrets
import socket
import statistics
import subprocess
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _peers  # noqa: E402
import cycles  # noqa: E402
import many  # noqa: E402
import npc  # noqa: E402

warnings.filterwarnings("ignore", message=".*confinement='none'.*")
PEER_SCRIPT = os.path.join(HERE, "_peers.py")
PIPE_SIZE = 1 << 20  # what capbridge gives its channel pipes

# The sandbox side of capbridge: the same loops as benchmarks/_peers.py.
SANDBOX_MODULE = '''
import array, time

def f(x):
    return x

def cb():
    return calc.add(1, 2)

def loop(n):
    add = calc.add
    pc = time.perf_counter
    ts = array.array("d", bytes(8 * n))
    for i in range(n):
        t0 = pc()
        add(1, 2)
        ts[i] = pc() - t0
    return ts.tobytes()

_blobs = {}

def sink(b):
    return len(b)

def source(n):
    b = _blobs.get(n)
    if b is None:
        b = _blobs[n] = bytes(n)
    return b

def sink_array(a):
    return a.nbytes

def source_array(n):
    key = ("array", n)
    a = _blobs.get(key)
    if a is None:
        import numpy
        a = _blobs[key] = numpy.arange(n // 8, dtype="<f8")
    return a
'''


# =============================================================== helpers

ALL_CPUS = sorted(os.sched_getaffinity(0))


def pin_pid(pid: int, cpu: int | None) -> None:
    """Pin every thread of ``pid`` (0: this process) to ``cpu`` (None: all CPUs)."""
    cpus = set(ALL_CPUS) if cpu is None else {cpu}
    proc = "self" if pid == 0 else str(pid)
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{proc}/task")]
    except OSError:
        tids = [pid]
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cpus)
        except OSError:
            pass


class spawning_on:
    """Threads and processes started inside inherit ``cpu`` (main thread is re-pinned after)."""

    def __init__(self, cpu: int | None, host_cpu: int | None) -> None:
        self.cpu, self.host_cpu = cpu, host_cpu

    def __enter__(self):
        os.sched_setaffinity(0, set(ALL_CPUS) if self.cpu is None else {self.cpu})

    def __exit__(self, *exc):
        os.sched_setaffinity(0, set(ALL_CPUS) if self.host_cpu is None else {self.host_cpu})


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = min(len(xs) - 1, max(0, int(round(q * (len(xs) - 1)))))
    return xs[k]


def time_calls(fn, arg_calls: int) -> list[float]:
    """Per-call seconds of ``fn()`` timed on this side, ``arg_calls`` times."""
    pc = time.perf_counter
    ts = [0.0] * arg_calls
    for i in range(arg_calls):
        t0 = pc()
        fn()
        ts[i] = pc() - t0
    return ts


def unpack_times(b: bytes) -> list[float]:
    return array.array("d", b).tolist()


def uss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            total = 0
            for line in f:
                if line.startswith(("Private_Clean:", "Private_Dirty:")):
                    total += int(line.split()[1])
            return total
    except OSError:
        return None


def count_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def zombies_of(ppids: set[int]) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == b"Z" and int(fields[1]) in ppids:
            out.append(int(name))
    return out


def us(x: float) -> str:
    return "-" if x != x else f"{x * 1e6:.1f}"


def ms(x: float) -> str:
    if x != x:
        return "-"
    return f"{x * 1e3:.3f}" if x < 0.01 else f"{x * 1e3:.1f}"


def table(headers: list[str], rows: list[list[str]], title: str) -> str:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    line = "  ".join("-" * w for w in widths)
    out = [f"\n## {title}", "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths))), line]
    for r in rows:
        out.append("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(out)


class NotInstalled(Exception):
    pass


# =============================================================== contenders
# Each has h2s(n), s2h(n), cb(n) -> per-call seconds, send(blob), recv(size), close().

class PickleLoop:
    name = "pickle loop (baseline)"
    transport = "2 pipes, 4-byte length + pickle"

    def __init__(self, cpu: int, host_cpu: int) -> None:
        to_child, to_host = os.pipe(), os.pipe()
        for r, w in (to_child, to_host):
            try:
                import fcntl

                fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
            except OSError:
                pass
        with spawning_on(cpu, host_cpu):
            self.proc = subprocess.Popen(
                [sys.executable, PEER_SCRIPT, "pickle", str(to_child[0]), str(to_host[1])],
                pass_fds=(to_child[0], to_host[1]), stdin=subprocess.DEVNULL)
        os.close(to_child[0])
        os.close(to_host[1])
        self.wfd, self.rfd = to_child[1], to_host[0]
        self.call("f", 0)

    def _serve_until_return(self):
        rfd, wfd = self.rfd, self.wfd
        while True:
            msg = _peers.recv_msg(rfd)
            if msg[0] == "r":
                return msg[1]
            if msg[0] == "add":
                a, b = msg[1]
                _peers.send_msg(wfd, ("r", a + b))
            else:
                raise RuntimeError(msg[0])

    def call(self, *msg):
        _peers.send_msg(self.wfd, msg)
        return self._serve_until_return()

    def h2s(self, n):
        call = self.call
        return time_calls(lambda: call("f", 1), n)

    def cb(self, n):
        call = self.call
        return time_calls(lambda: call("cb"), n)

    def s2h(self, n):
        return unpack_times(self.call("loop", n))

    def send(self, b):
        return self.call("sink", b)

    def recv(self, n):
        return self.call("source", n)

    def close(self):
        os.close(self.wfd)
        self.proc.wait(10)
        os.close(self.rfd)



def _make_calc():
    from capbridge import expose

    class Calc:
        @expose
        def add(self, a, b):
            return a + b

    return Calc()


class _PeerFunctions:
    """A contender whose peer offers ``f``, ``cb``, ``loop``, ``sink`` and ``source``
    as plain callables (set as ``self._f`` ... by ``__init__``)."""

    def h2s(self, n):
        f = self._f
        return time_calls(lambda: f(1), n)

    def cb(self, n):
        return time_calls(self._cb, n)

    def s2h(self, n):
        return unpack_times(self._loop(n))

    def send(self, b):
        return self._sink(b)

    def recv(self, n):
        return self._source(n)


class Capbridge(_PeerFunctions):
    def __init__(self, cpu: int, host_cpu: int, confinement: str = "strict") -> None:
        from capbridge import Limits, Sandbox

        self.name = f"capbridge ({confinement})"
        self.transport = "2 pipes (fork-server sandbox)"
        self.sb = Sandbox(grants={"calc": _make_calc()}, confinement=confinement,
                          limits=Limits(memory_mb=1024, cpu_seconds=None, wall_seconds=120),
                          allow_imports=("numpy",) if _has_numpy() else ())
        pin_pid(self.sb.pid, cpu)
        self.mod = self.sb.load(SANDBOX_MODULE, name="benchmod")
        self._f, self._cb, self._loop = self.mod.f, self.mod.cb, self.mod.loop
        self._sink, self._source = self.mod.sink, self.mod.source
        self._f(0)

    def send_array(self, a):
        return self.mod.sink_array(a)

    def recv_array(self, n):
        return self.mod.source_array(n)

    def close(self):
        self.sb.close()


def _has_numpy() -> bool:
    try:
        import numpy  # noqa: F401
    except ImportError:
        return False
    return True


class RPyC(_PeerFunctions):
    name = "RPyC"
    transport = "service over a Unix socketpair"

    def __init__(self, cpu: int, host_cpu: int) -> None:
        try:
            import rpyc
            from rpyc.core.stream import SocketStream
        except ImportError:
            raise NotInstalled from None

        class HostService(rpyc.Service):
            def exposed_add(self, a, b):
                return a + b

        host, child = socket.socketpair()
        with spawning_on(cpu, host_cpu):
            self.proc = subprocess.Popen([sys.executable, PEER_SCRIPT, "rpyc", str(child.fileno())],
                                         pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL)
        child.close()
        self.conn = rpyc.connect_stream(SocketStream(host), service=HostService,
                                        config={"sync_request_timeout": 120})
        root = self.conn.root
        self._f, self._cb, self._loop = root.f, root.cb, root.loop
        self._sink, self._source = root.sink, root.source
        self._f(0)

    def close(self):
        self.conn.close()
        self.proc.wait(10)


class Pyro5Peer:
    name = "Pyro5"
    transport = "TCP 127.0.0.1, marshal serializer, NODELAY"

    def __init__(self, cpu: int, host_cpu: int) -> None:
        try:
            import Pyro5.api
        except ImportError:
            raise NotInstalled from None
        _peers.pyro5_configure()

        @Pyro5.api.expose
        class HostCalc:
            def add(self, a, b):
                return a + b

        self.daemon = Pyro5.api.Daemon(host="127.0.0.1")
        self.host_uri = str(self.daemon.register(HostCalc(), "hostcalc"))
        self.thread = threading.Thread(target=self.daemon.requestLoop, daemon=True)
        self.thread.start()
        with spawning_on(cpu, host_cpu):
            self.proc = subprocess.Popen([sys.executable, PEER_SCRIPT, "pyro5"], stdout=subprocess.PIPE,
                                         stdin=subprocess.DEVNULL, text=True)
        uri = self.proc.stdout.readline().strip()
        self.proxy = Pyro5.api.Proxy(uri)
        self.proxy._pyroBind()
        self.proxy.f(0)

    def h2s(self, n):
        f = self.proxy.f
        return time_calls(lambda: f(1), n)

    def cb(self, n):
        cb, uri = self.proxy.cb, self.host_uri
        return time_calls(lambda: cb(uri), n)

    def s2h(self, n):
        return unpack_times(self.proxy.loop(n, self.host_uri))

    def send(self, b):
        return self.proxy.sink(b)

    def recv(self, n):
        return self.proxy.source(n)

    def close(self):
        try:
            self.proxy.shutdown()
        except Exception:
            pass
        self.proxy._pyroRelease()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.daemon.shutdown()
        self.thread.join(5)
        self.daemon.close()


class Managers:
    name = "multiprocessing.managers"
    transport = "BaseManager default (Unix socket, pickle)"

    def __init__(self, cpu: int, host_cpu: int) -> None:
        from multiprocessing.managers import BaseManager

        self.authkey = secrets.token_bytes(16)

        class PeerManager(BaseManager):
            pass

        class HostManager(BaseManager):
            pass

        PeerManager.register("ManagerPeer", _peers.ManagerPeer)
        host_calc = _peers.HostCalc()
        HostManager.register("HostCalc", callable=lambda: host_calc)
        # The host side: a manager server in a thread of this process (for the
        # peer's calls back to the host).
        self.host_mgr = HostManager(address=None, authkey=self.authkey)
        self.server = self.host_mgr.get_server()
        self.address = self.server.address
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        with spawning_on(cpu, host_cpu):
            self.mgr = PeerManager(authkey=self.authkey)
            self.mgr.start()
        self.peer = self.mgr.ManagerPeer()
        self.peer.f(0)

    def _serve(self):
        try:
            self.server.serve_forever()
        except SystemExit:
            pass

    def h2s(self, n):
        f = self.peer.f
        return time_calls(lambda: f(1), n)

    def cb(self, n):
        cb, addr, key = self.peer.cb, self.address, self.authkey
        return time_calls(lambda: cb(addr, key), n)

    def s2h(self, n):
        return unpack_times(self.peer.loop(n, self.address, self.authkey))

    def send(self, b):
        return self.peer.sink(b)

    def recv(self, n):
        return self.peer.source(n)

    def close(self):
        del self.peer
        self.mgr.shutdown()
        self.server.stop_event.set()
        self.thread.join(5)


# Started in this order (managers forks this process, so it goes first and inherits
# no other contender's pipe ends); closed in reverse order; printed in PRINT_ORDER.
CONTENDERS = [
    ("managers", Managers),
    ("pickle", PickleLoop),
    ("capbridge", lambda cpu, host: Capbridge(cpu, host, "strict")),
    ("capbridge-none", lambda cpu, host: Capbridge(cpu, host, "none")),
    ("rpyc", RPyC),
    ("pyro5", Pyro5Peer),
]
PRINT_ORDER = ["pickle", "capbridge", "capbridge-none", "rpyc", "pyro5", "managers"]
DIRECTIONS = [("h2s", "host -> sandbox"), ("s2h", "sandbox -> host"), ("cb", "callback round trip")]


# =============================================================== section 1, 2, 6: calls and bulk

def start_contenders(cpu: int, host_cpu: int) -> dict:
    live: dict = {}
    for key, factory in CONTENDERS:
        try:
            live[key] = factory(cpu, host_cpu)
        except NotInstalled:
            live[key] = "not installed"
        except Exception as exc:  # report, keep going
            print(f"  {key} failed to start: {type(exc).__name__}: {exc}", file=sys.stderr)
            live[key] = "failed"
    # Threads started by the contenders (Pyro daemon, manager server...) run on the host CPU.
    pin_pid(0, host_cpu)
    os.sched_setaffinity(0, set(ALL_CPUS) if host_cpu is None else {host_cpu})
    return live


def stop_contenders(live: dict) -> None:
    for c in reversed(list(live.values())):
        if not isinstance(c, str):
            try:
                c.close()
            except Exception as exc:
                print(f"  (closing {c.name}: {exc!r})", file=sys.stderr)


def measure_latency(live: dict, reps: int, batch: int, warm: int) -> dict:
    """Round-robin batches over contenders and directions; pooled per-call samples."""
    samples: dict = {(k, d): [] for k in live for d, _ in DIRECTIONS}
    for key, c in live.items():
        if isinstance(c, str):
            continue
        for d, _ in DIRECTIONS:
            getattr(c, d)(warm)
    for _ in range(reps):
        for key, c in live.items():
            if isinstance(c, str):
                continue
            for d, _ in DIRECTIONS:
                gc.collect()
                samples[(key, d)].extend(getattr(c, d)(batch))
    return samples


def measure_bulk(live: dict, sizes: list[int], reps_for) -> dict:
    out: dict = {}
    for size in sizes:
        data = os.urandom(size)
        n = reps_for(size)
        for key, c in live.items():
            if isinstance(c, str):
                continue
            for way in ("send", "recv"):
                fn = (lambda: c.send(data)) if way == "send" else (lambda: c.recv(size))
                try:
                    fn()  # warm-up (and the peer builds its blob)
                    ts = time_calls(fn, n)
                    out[(key, size, way)] = ts
                except Exception as exc:
                    print(f"  {key} bulk {size} {way} failed: {exc!r}", file=sys.stderr)
                    out[(key, size, way)] = "failed"
    # numpy arrays by value (capbridge only: value records of plain dtypes)
    if _has_numpy():
        import numpy

        size = sizes[-1]
        arr = numpy.arange(size // 8, dtype="<f8")
        for key, c in live.items():
            if isinstance(c, str) or not hasattr(c, "send_array"):
                continue
            for way in ("send", "recv"):
                fn = (lambda: c.send_array(arr)) if way == "send" else (lambda: c.recv_array(size))
                try:
                    fn()
                    out[(key, size, way + "_array")] = time_calls(fn, reps_for(size))
                except Exception as exc:
                    print(f"  {key} array {size} {way} failed: {exc!r}", file=sys.stderr)
    return out


# =============================================================== section 3: start

COLD_SCRIPT = r'''
import sys, time, warnings
warnings.simplefilter("ignore")
sys.path[:0] = [{paths!r}]
from capbridge import Sandbox
t0 = time.perf_counter()
sb = Sandbox(confinement={conf!r})
dt = time.perf_counter() - t0
sb.eval("1")
sb.close()
print(dt)
'''


def byte_compile() -> None:
    """Write the library's bytecode, as installing it does: cold starts then time a
    library as installed (under PYTHONDONTWRITEBYTECODE the host-only modules would
    otherwise be compiled again in every run)."""
    import compileall

    for pkg in ("capbridge", "sandbox_vm", "host_apis"):
        compileall.compile_dir(os.path.join(os.path.dirname(HERE), pkg), quiet=2)


def cold_start(conf: str, n: int) -> list[float]:
    byte_compile()
    out = []
    script = COLD_SCRIPT.format(paths=os.path.dirname(HERE), conf=conf)
    for _ in range(n):
        r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}")
        out.append(float(r.stdout.strip().splitlines()[-1]))
    return out


PRESTART_SCRIPT = r'''
import sys, time
sys.path[:0] = [{paths!r}]
from sandbox_vm import _spawn
t0 = time.perf_counter()
_spawn.prestart()
print(time.perf_counter() - t0)
'''


def cold_prestart(n: int) -> list[float]:
    byte_compile()
    out = []
    for _ in range(n):
        r = subprocess.run([sys.executable, "-c", PRESTART_SCRIPT.format(paths=os.path.dirname(HERE))],
                           capture_output=True, text=True, timeout=60)
        out.append(float(r.stdout.strip().splitlines()[-1]))
    return out


def warm_start(conf: str, n: int) -> list[float]:
    from capbridge import Sandbox
    from sandbox_vm import _spawn

    _spawn.prestart()
    Sandbox(confinement=conf).close()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        sb = Sandbox(confinement=conf)
        out.append(time.perf_counter() - t0)
        sb.close()
    return out


def pooled_start(conf: str, n: int, size: int = 4) -> list[float]:
    from capbridge import SandboxPool

    out = []
    with SandboxPool(size, confinement=conf) as pool:
        for _ in range(n):
            deadline = time.monotonic() + 30
            while pool.stats()["ready"] < size and time.monotonic() < deadline:
                time.sleep(0.005)
            t0 = time.perf_counter()
            sb = pool.take()
            out.append(time.perf_counter() - t0)
            sb.close()
    return out


# =============================================================== section 4, 5: memory and many

def idle_uss(conf: str, n: int) -> list[int]:
    from capbridge import Sandbox

    sbs = [Sandbox(confinement=conf) for _ in range(n)]
    try:
        time.sleep(0.2)
        return [u for u in (uss_kb(sb.pid) for sb in sbs) if u is not None]
    finally:
        for sb in sbs:
            sb.close()


def many_sandboxes(count: int, workers: int = 8) -> dict:
    from capbridge import Sandbox
    from sandbox_vm import _spawn

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    _spawn.prestart()
    Sandbox().close()
    gc.collect()
    fds0 = count_fds()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as ex:
        sbs = list(ex.map(lambda _: Sandbox(), range(count)))
    t_start = time.perf_counter() - t0
    fds1 = count_fds()
    uss = [uss_kb(sb.pid) or 0 for sb in sbs]
    t0 = time.perf_counter()
    ok = sum(1 for i, sb in enumerate(sbs) if sb.eval(f"{i} + 1") == i + 1)
    t_calls = time.perf_counter() - t0
    server_pid = _spawn.stats().get("server_pid", -1)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as ex:
        list(ex.map(lambda sb: sb.close(), sbs))
    t_close = time.perf_counter() - t0
    del sbs
    gc.collect()
    deadline = time.monotonic() + 10
    while _spawn.stats().get("live", 0) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)
    fds2 = count_fds()
    return {
        "count": count, "start_s": t_start, "calls_ok": ok, "calls_s": t_calls, "close_s": t_close,
        "uss_total_kb": sum(uss), "uss_median_kb": statistics.median(uss) if uss else 0,
        "fds_before": fds0, "fds_running": fds1, "fds_after": fds2,
        "live_after": _spawn.stats().get("live", 0),
        "zombies": zombies_of({os.getpid(), server_pid}),
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
    }


# =============================================================== main

def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="about 30 s instead of 2-3 min")
    ap.add_argument("--many", type=int, default=None, help="sandboxes in section 5 (default 500, --quick 100)")
    ap.add_argument("--only", default="latency,bulk,start,memory,many,npc,fanout",
                    help="comma list of sections: latency,bulk,start,memory,many,npc,fanout")
    ap.add_argument("--plots", metavar="DIR", help="draw the tables as PNG plots into DIR (needs matplotlib)")
    ap.add_argument("--json", metavar="FILE", help="write the figures as JSON to FILE")
    args = ap.parse_args(argv)
    results: dict = {"sections": {}}
    quick = args.quick
    sections = set(args.only.split(","))
    many_count = args.many if args.many is not None else (100 if quick else 500)
    reps, batch, warm = (3, 600, 200) if quick else (7, 1500, 500)

    started = time.perf_counter()
    host_cpu = ALL_CPUS[0]
    other_cpu = ALL_CPUS[1] if len(ALL_CPUS) > 1 else None
    print(f"# capbridge benchmarks  {time.strftime('%Y-%m-%d %H:%M')}  "
          f"{'--quick' if quick else 'default'} run")
    print(f"python {platform.python_version()}, {platform.system()} {platform.release()}, "
          f"nproc {os.cpu_count()} (usable {len(ALL_CPUS)}), {platform.machine()}")
    versions = []
    for mod in ("rpyc", "Pyro5"):
        try:
            m = __import__(mod)
            versions.append(f"{mod} {getattr(m, '__version__', '?')}")
        except ImportError:
            versions.append(f"{mod} not installed")
    try:
        rev = subprocess.run(["git", "-C", HERE, "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5).stdout.strip()
    except Exception:
        rev = ""
    print("peers: " + ", ".join(versions) + (f"; capbridge at git {rev}" if rev else ""))

    # (name, CPU of the peers, CPU of the host): pinned together, pinned apart, and as an
    # application runs - nothing pinned, the kernel places both.
    placements = [("same CPU", host_cpu, host_cpu)]
    if other_cpu is not None:
        placements.append(("cross CPU", other_cpu, host_cpu))
        placements.append(("unpinned", None, None))
    lat: dict = {}
    bulk: dict = {}
    status: dict = {}
    if sections & {"latency", "bulk"}:
        for pname, cpu, hcpu in placements:
            pin_pid(0, hcpu)
            os.sched_setaffinity(0, set(ALL_CPUS) if hcpu is None else {hcpu})
            where = "nothing pinned" if cpu is None else f"host on CPU {hcpu}, peers on CPU {cpu}"
            print(f"... {pname}: {where}", flush=True)
            live = start_contenders(cpu, hcpu)
            try:
                for k, c in live.items():
                    status[k] = c if isinstance(c, str) else None
                if "latency" in sections:
                    lat[pname] = measure_latency(live, reps, batch, warm)
                if "bulk" in sections:
                    sizes = [1 << 20, 16 << 20]
                    bulk[pname] = measure_bulk(
                        live, sizes, lambda s: (10 if s <= 1 << 20 else 3) if quick else (30 if s <= 1 << 20 else 8))
            finally:
                stop_contenders(live)
        pin_pid(0, None)
        os.sched_setaffinity(0, set(ALL_CPUS))

    names = {"pickle": "pickle loop (baseline)", "capbridge": "capbridge (strict)",
             "capbridge-none": "capbridge (none)", "rpyc": "RPyC", "pyro5": "Pyro5",
             "managers": "multiprocessing.managers"}
    pnames = [p for p, _, _ in placements]

    if lat:
        print(f"\nLatency: {reps} reps x {batch} calls per contender and direction (after {warm} warm-up), "
              "round-robin; per-call µs, median and p90 of all samples; ratio = median / pickle-loop median "
              "in the same placement.")
        for d, dlabel in DIRECTIONS:
            headers = ["contender"]
            for p in pnames:
                headers += [f"{p} med", "p90", "x base"]
            rows = []
            for key in PRINT_ORDER:
                row = [names[key]]
                for p in pnames:
                    if status.get(key):
                        row += [status[key], "", ""]
                        continue
                    s = lat[p][(key, d)]
                    base = statistics.median(lat[p][("pickle", d)])
                    med = statistics.median(s)
                    row += [us(med), us(pct(s, 0.9)), f"{med / base:.2f}x"]
                rows.append(row)
            print(table(headers, rows, f"1. {dlabel} (add(1, 2) / f(1)), µs per call"))
        print("\ntransports: pickle loop = 2 pipes, 4-byte length + pickle.dumps/loads; capbridge = 2 pipes; "
              "RPyC = service over a Unix socketpair; Pyro5 = TCP 127.0.0.1, marshal, NODELAY; "
              "managers = BaseManager default (Unix socket); callbacks use a 2nd manager served by a host thread.")
        target = []
        for p in pnames:
            for d, dlabel in DIRECTIONS:
                r = statistics.median(lat[p][("capbridge", d)]) / statistics.median(lat[p][("pickle", d)])
                target.append(f"{p} {d}: {r:.2f}x {'OK' if r <= 1.3 else 'MISS'}")
        print("target capbridge <= 1.3x pickle loop: " + "; ".join(target))
        results["sections"]["latency"] = {
            p: {d: {k: {"median_us": statistics.median(lat[p][(k, d)]) * 1e6,
                        "p90_us": pct(lat[p][(k, d)], 0.9) * 1e6}
                    for k in PRINT_ORDER if not status.get(k)}
                for d, _ in DIRECTIONS}
            for p in pnames}

        rows = []
        for p in pnames:
            for d, dlabel in DIRECTIONS:
                s = statistics.median(lat[p][("capbridge", d)])
                n = statistics.median(lat[p][("capbridge-none", d)])
                rows.append([f"{p}, {dlabel}", us(s), us(n), f"{s / n:.2f}x"])
        print(table(["call", "strict µs", "none µs", "strict/none"], rows,
                    "6. Call latency by confinement (same run, same placement)"))

    if bulk:
        for p in pnames:
            headers = ["contender"]
            for size in (1 << 20, 16 << 20):
                for way in ("send", "recv"):
                    headers += [f"{size >> 20}MB {'to' if way == 'send' else 'from'} MB/s", "x base"]
            rows = []
            for key in PRINT_ORDER:
                row = [names[key]]
                for size in (1 << 20, 16 << 20):
                    for way in ("send", "recv"):
                        v = bulk[p].get((key, size, way))
                        if v is None or isinstance(v, str):
                            row += [status.get(key) or v or "-", ""]
                            continue
                        mbs = size / (1 << 20) / statistics.median(v)
                        base = size / (1 << 20) / statistics.median(bulk[p][("pickle", size, way)])
                        row += [f"{mbs:.0f}", f"{mbs / base:.2f}x"]
                rows.append(row)
            print(table(headers, rows, f"2. Bulk bytes, {p}: 'to' = host passes bytes in, 'from' = "
                                       "peer returns bytes; median per call, MB = 2^20 bytes; x base = "
                                       "throughput / pickle loop"))
            rows = []
            for key in ("capbridge", "capbridge-none"):
                cells = [bulk[p].get((key, 16 << 20, way + "_array")) for way in ("send", "recv")]
                if all(isinstance(v, list) for v in cells):
                    rows.append([names[key]] + [f"{16 / statistics.median(v) / 1024:.2f}" for v in cells])
            if rows:
                print(table(["contender", "16MB array to GB/s", "16MB array from GB/s"], rows,
                            f"2b. numpy float64 arrays by value, {p}: median per call, GB = 2^30 bytes"))

    if "start" in sections:
        rows = []
        n_cold, n_warm, n_pool = (3, 15, 15) if quick else (7, 40, 40)
        for conf in ("strict", "none"):
            for kind, fn, n, target in (("cold", cold_start, n_cold, 0.040), ("warm", warm_start, n_warm, None),
                                        ("pooled take()", pooled_start, n_pool, 0.003)):
                try:
                    ts = fn(conf, n)
                    med = statistics.median(ts)
                    verdict = "" if target is None else ("OK" if med <= target else "MISS")
                    rows.append([f"{conf}, {kind}", str(n), ms(med), ms(pct(ts, 0.9)),
                                 "-" if target is None else f"<= {target * 1e3:g}", verdict])
                except Exception as exc:
                    rows.append([f"{conf}, {kind}", str(n), f"failed: {exc}"[:50], "", "", ""])
        try:
            ts = [float(x) for x in cold_prestart(n_cold)]
            rows.append(["fork server alone (cold prestart())", str(n_cold), ms(statistics.median(ts)),
                         ms(pct(ts, 0.9)), "-", ""])
        except Exception as exc:
            rows.append(["fork server alone", "", f"failed: {exc}"[:50], "", "", ""])
        n_cycle = 15 if quick else 50
        for conf in ("strict", "none"):
            for kind, fn, target in (("fresh cycle", cycles.fresh, 0.005), ("pooled cycle", cycles.pooled, 0.001)):
                try:
                    ts = fn(n_cycle, conf)
                    med = statistics.median(ts)
                    rows.append([f"{conf}, {kind}", str(n_cycle), ms(med), ms(pct(ts, 0.9)),
                                 f"<= {target * 1e3:g}", "OK" if med <= target else "MISS"])
                except Exception as exc:
                    rows.append([f"{conf}, {kind}", str(n_cycle), f"failed: {exc}"[:50], "", "", ""])
        print(table(["sandbox start", "n", "median ms", "p90 ms", "target ms", ""], rows,
                    "3. Sandbox start: request to ready, locked-down sandbox (unpinned); a cycle is "
                    "start (or check-out), eval('1') and close"))
        results["sections"]["start"] = [
            {"what": r[0], "median_ms": float(r[2]) if _is_number(r[2]) else None,
             "target_ms": float(r[4][3:]) if r[4].startswith("<= ") else None} for r in rows]

    if "memory" in sections:
        from sandbox_vm import _spawn

        rows = []
        n = 5 if quick else 10
        for conf in ("strict", "none"):
            u = idle_uss(conf, n)
            if u:
                med = statistics.median(u) / 1024
                rows.append([conf, str(len(u)), f"{med:.2f}", f"{max(u) / 1024:.2f}", "<= 5",
                             "OK" if med <= 5 else "MISS"])
        server = _spawn.stats().get("server_pid", -1)
        su = uss_kb(server) if server > 0 else None
        print(table(["confinement", "n", "USS median MB", "max MB", "target MB", ""], rows,
                    "4. Memory per idle sandbox (USS = Private_Clean + Private_Dirty, smaps_rollup)"))
        if su is not None:
            print(f"fork server USS (paid once per host): {su / 1024:.2f} MB")

    if "many" in sections:
        try:
            r = many_sandboxes(many_count)
            leak = r["fds_after"] - r["fds_before"]
            print(f"\n## 5. {r['count']} concurrent idle strict sandboxes (8 starter threads)")
            print(f"started all in {r['start_s']:.2f} s ({r['start_s'] / r['count'] * 1e3:.1f} ms each on average)")
            print(f"total USS {r['uss_total_kb'] / 1024:.0f} MB (median {r['uss_median_kb'] / 1024:.2f} MB each)")
            print(f"host fds: {r['fds_before']} before, {r['fds_running']} with all running "
                  f"({(r['fds_running'] - r['fds_before']) / r['count']:.1f} per sandbox), {r['fds_after']} after close "
                  f"({'no leak' if leak <= 0 else f'LEAK of {leak}'}); RLIMIT_NOFILE {r['nofile']}")
            print(f"a call to each: {r['calls_ok']}/{r['count']} ok in {r['calls_s'] * 1e3:.0f} ms; "
                  f"closed all in {r['close_s']:.2f} s; live after close: {r['live_after']}; "
                  f"zombies: {len(r['zombies'])}")
        except Exception as exc:
            print(f"\n## 5. many sandboxes failed: {type(exc).__name__}: {exc}")

    if "npc" in sections:
        npcs, ticks = 50, (20 if quick else 60)
        res = npc.run(npcs, ticks)
        rows = []
        for label, times in res.items():
            med = statistics.median(times)
            rows.append([label, f"{1 / med:.1f}", ms(med), ms(pct(times, 0.9)), ">= 100",
                         "OK" if 1 / med >= 100 else "MISS"])
        print(table(["driven by", "ticks/s", "median ms", "p90 ms", "target", ""], rows,
                    f"7. NPC ticks: {npcs} strict sandboxes, a tick = one call into each making 3 host calls "
                    "(unpinned, except the one-CPU row: the host thread pinned, cpus=\"caller\")"))
        results["sections"]["npc"] = {label: 1 / statistics.median(times) for label, times in res.items()}

    if "fanout" in sections:
        counts = [1, 64] if quick else [1, 64, 200]
        seconds = 1.0 if quick else 3.0
        rows = []
        fan: dict = {}
        for kind, label in (("f", "plain"), ("cb", "nested")):
            raw = {n: many.run_raw(n, kind, seconds) for n in counts}
            one = None
            for how in ("threads", "gather", "raw"):
                for n in counts:
                    if n == 1 and how == "gather":
                        continue
                    rate, per = raw[n] if how == "raw" else many.run(n, kind, seconds, how)
                    one = per if one is None else one
                    fan.setdefault(label, {}).setdefault(how, {})[n] = per
                    rows.append([str(n), label, how, f"{rate:.0f}", f"{per:.1f}", f"{per / one:.2f}x",
                                 f"{per / raw[n][1]:.2f}x"])
        print(table(["sandboxes", "call", "driven by", "calls/s", "µs/call/core", "x one", "x raw"], rows,
                    f"8. Calls into many busy sandboxes ({seconds:g} s a row, unpinned): threads = a host thread "
                    "per sandbox; gather = one thread, capbridge.gather; raw = hand-written fan-out "
                    "(forked children, pickles on pipes, one epoll thread); x one = / one sandbox on one thread"))
        results["sections"]["fanout"] = fan

    if args.json:
        import json

        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    if args.plots:
        import _plots

        for path in _plots.draw(results, args.plots):
            print(f"plot: {path}")

    print(f"\ntotal run time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
