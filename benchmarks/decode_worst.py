#!/usr/bin/env python3
"""Worst-case cost of the host's decoder: adversarial frames from a real sandbox.

    python benchmarks/decode_worst.py                 # every frame at 1, 16 and 64 MiB
    python benchmarks/decode_worst.py --sizes 1,16 --only empty_sets,small_lists

Each frame (``benchmarks/_worst_frames.py``) is built *inside* an attacking sandbox,
which writes it straight onto its channel fd while the host waits for an answer, as
hostile code would. Every (frame, size) runs in a fresh host process, so memory peaks
do not hide each other, and reports:

* host CPU per MiB of frame: ``time.thread_time`` of the host thread that reads and
  decodes it (the call's whole span: reading the pipe, decoding, refusing);
* peak host memory per frame byte: the rise of the host's RSS high-water mark
  (``VmHWM``, reset through ``/proc/self/clear_refs`` just before);
* the longest stall of another sandbox: a second sandbox is called in a loop
  (``f(1)``) on another host thread; the longest gap between two of its answers while
  the frame is read and decoded;
* whether the host survived (the child's exit status) and what the call raised.

Targets (issue 7): <= 50 ms host CPU per MiB, peak memory <= 16x the frame (and under
``Limits.max_decoded_mb``), no stall of another sandbox > 100 ms, the host never
crashes. Nothing here is part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TESTS = os.path.join(ROOT, "tests")
MIB = 1 << 20
TARGET_CPU_MS_PER_MIB = 50
TARGET_PEAK_X = 16
TARGET_STALL_MS = 100

# The attacker's helper: builds a frame from the corpus and writes it onto the
# channel behind the runtime's back (hostile.ATTACK_SRC does the writing).
BUILD_SRC = r"""
import hostile, hostile_attack, worst_frames

def build(name, size, limit, cap_name):
    target = size
    for _ in range(4):
        body = worst_frames.CASES[name][1](target)
        if len(body) + 4 <= limit:
            break
        target = int(target * target / len(body)) - 4096
    return hostile_attack.stash(body, cap_name)
"""

CHILD_SRC = r"""
import gc, json, os, sys, threading, time, warnings
warnings.simplefilter("ignore")
sys.path[:0] = [{tests!r}]
import capbridge
from capbridge import Limits, Sandbox, expose
import hostile as H

name, size, conf = {name!r}, {size}, {conf!r}

class Vault:
    @expose
    def ping(self, *args):
        return "pong"

def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0

limits = Limits(memory_mb=2048, cpu_seconds=None, wall_seconds=120)
other = Sandbox(confinement=conf, limits=limits)
bmod = other.load("def f(x):\n    return x\n", name="other")
f = bmod.f
f(0)
stamps = []
stop = threading.Event()
def loop():
    while not stop.is_set():
        f(1)
        stamps.append(time.perf_counter())
threading.Thread(target=loop, daemon=True).start()

sb = Sandbox({{"vault": Vault()}}, confinement=conf, limits=limits)
sb.load(open({hostile!r}).read(), "hostile")
sb.load(H.ATTACK_SRC, "hostile_attack")
sb.load(open({frames!r}).read(), "worst_frames")
builder = sb.load({build!r}, "worst_build")
n = builder.build(name, size, sb.limits.max_frame, "vault")
del builder
gc.collect()
time.sleep(0.2)
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")
base = status("VmRSS")
t_start = time.perf_counter()
c0 = time.thread_time()
try:
    sb.exec("import hostile_attack\nhostile_attack.fire()")
    outcome = "returned"
except capbridge.CapbridgeError as exc:
    outcome = type(exc).__name__ + ": " + str(exc).split("\n")[0]
cpu = time.thread_time() - c0
t_end = time.perf_counter()
peak = status("VmHWM") - base
stop.set()
time.sleep(0.05)
window = [t_start] + [t for t in stamps if t_start <= t <= t_end] + [min(t_end, stamps[-1] if stamps else t_end)]
later = [t for t in stamps if t > t_end]
if later:
    window.append(later[0])
gaps = [b - a for a, b in zip(window, window[1:])]
alive = other.eval("6 * 7") == 42
sb.close()
other.close()
print("RESULT " + json.dumps({{"frame": n, "cpu": cpu, "peak": peak, "stall": max(gaps) if gaps else 0.0,
                               "wall": t_end - t_start, "outcome": outcome, "other_alive": alive,
                               "max_decoded": limits.max_decoded}}))
"""


def cases() -> dict:
    sys.path[:0] = [TESTS, HERE]
    import _worst_frames

    return {k: v[0] for k, v in _worst_frames.CASES.items()}


def run_one(name: str, size: int, conf: str, timeout: float) -> dict:
    src = CHILD_SRC.format(tests=TESTS, name=name, size=size, conf=conf, hostile=os.path.join(TESTS, "hostile.py"),
                           frames=os.path.join(HERE, "_worst_frames.py"), build=BUILD_SRC)
    try:
        r = subprocess.run([sys.executable, "-c", src], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"host still busy after {timeout:.0f} s"}
    for line in r.stdout.splitlines():
        if line.startswith("RESULT "):
            out = json.loads(line[7:])
            out["rc"] = r.returncode
            return out
    tail = (r.stderr.strip().splitlines() or ["?"])[-1]
    return {"error": f"host exited {r.returncode}: {tail[:80]}", "rc": r.returncode}


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,16,64", help="frame sizes in MiB (default 1,16,64)")
    ap.add_argument("--only", default="", help="comma list of frame names")
    ap.add_argument("--confinement", default="strict", choices=("strict", "none"))
    ap.add_argument("--timeout", type=float, default=120)
    args = ap.parse_args(argv)
    names = cases()
    chosen = [n for n in names if not args.only or n in args.only.split(",")]
    sizes = [int(float(x) * MIB) for x in args.sizes.split(",")]
    conf = args.confinement
    if conf == "strict":
        from capbridge import ConfinementUnavailable, Sandbox

        try:
            Sandbox(confinement="strict").close()
        except ConfinementUnavailable:
            conf = "none"
    started = time.perf_counter()
    print(f"# decode_worst  {time.strftime('%Y-%m-%d %H:%M')}  python {sys.version.split()[0]}, nproc "
          f"{os.cpu_count()}, attacker confinement {conf!r}")
    print(f"targets: host CPU <= {TARGET_CPU_MS_PER_MIB} ms/MiB, peak RSS <= {TARGET_PEAK_X}x the frame "
          f"(and <= max_decoded), other sandbox stall <= {TARGET_STALL_MS} ms, host alive\n")
    head = f"{'frame':20s} {'MiB':>4s} {'CPU ms/MiB':>10s} {'':4s} {'peak x':>7s} {'':4s} {'stall ms':>8s} {'':4s} " \
           f"{'host':4s}  outcome"
    print(head)
    print("-" * len(head) + "-" * 40)
    misses = {"cpu": 0, "peak": 0, "stall": 0, "crash": 0}
    for name in chosen:
        for size in sizes:
            r = run_one(name, size, conf, args.timeout)
            mib = size // MIB
            if "error" in r:
                misses["crash"] += 1
                print(f"{name:20s} {mib:4d} {'':>10s} {'':4s} {'':>7s} {'':4s} {'':>8s} {'':4s} MISS  {r['error']}")
                continue
            frame_mib = r["frame"] / MIB
            cpu = r["cpu"] * 1e3 / frame_mib
            peak = r["peak"] / r["frame"]
            stall = r["stall"] * 1e3
            ok_cpu = cpu <= TARGET_CPU_MS_PER_MIB
            ok_peak = peak <= TARGET_PEAK_X and r["peak"] <= r["max_decoded"] + r["frame"]
            ok_stall = stall <= TARGET_STALL_MS
            ok_host = r["rc"] == 0 and r["other_alive"]
            for key, ok in (("cpu", ok_cpu), ("peak", ok_peak), ("stall", ok_stall), ("crash", ok_host)):
                misses[key] += not ok
            outcome = r["outcome"].replace("ProtocolError: ", "").replace("message over budget: ", "over: ")
            print(f"{name:20s} {mib:4d} {cpu:10.1f} {verdict(ok_cpu):4s} {peak:7.1f} {verdict(ok_peak):4s} "
                  f"{stall:8.1f} {verdict(ok_stall):4s} {verdict(ok_host):4s}  {outcome[:70]}", flush=True)
    runs = len(chosen) * len(sizes)
    print(f"\n{runs} runs in {time.perf_counter() - started:.0f} s; misses: CPU {misses['cpu']}, peak memory "
          f"{misses['peak']}, stall {misses['stall']}, host {misses['crash']}")
    print("frames:")
    for name in chosen:
        print(f"  {name:20s} {names[name]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
