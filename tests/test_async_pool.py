"""AsyncSandbox and SandboxPool."""

import asyncio
import threading

import pytest

import capbridge
from capbridge import AsyncSandbox, SandboxPool, expose

from conftest import CONFINEMENT


class Feed:
    def __init__(self):
        self.loop_thread = None

    @expose
    async def fetch(self, key):
        self.loop_thread = threading.get_ident()
        await asyncio.sleep(0.01)
        return key.upper()

    @expose
    def plain(self, x):
        return x + 1


def test_async_sandbox_awaits_async_capabilities_on_the_loop():
    feed = Feed()

    async def main():
        async with AsyncSandbox({"feed": feed}, confinement=CONFINEMENT) as sb:
            assert await sb.eval("feed.fetch('abc')") == "ABC"
            assert await sb.eval("feed.plain(1)") == 2
            await sb.exec("x = 40")
            assert await sb.eval("x + 2") == 42
            assert await sb.call(pow, 2, 5) == 32
            mod = await sb.load("def f():\n    return feed.fetch('q')\n", "m")
            assert await sb.run(mod.f) == "Q"
            return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert feed.loop_thread == loop_thread


def test_async_capability_in_sync_sandbox_is_a_clear_error(sandbox_factory):
    sb = sandbox_factory({"feed": Feed()})
    with pytest.raises(capbridge.RemoteError, match="AsyncSandbox"):
        sb.exec("feed.fetch('a')")


def test_pool_hands_out_fresh_sandboxes():
    with SandboxPool(2, confinement=CONFINEMENT) as pool:
        pids = set()
        for _ in range(4):
            with pool.sandbox() as sb:
                assert sb.eval("'used' in globals()") is False
                sb.exec("used = True")
                pids.add(sb.pid)
                assert sb.alive
            assert not sb.alive
        assert len(pids) == 4
    with pytest.raises(capbridge.SandboxError):
        pool.take()


def test_pool_skips_sandboxes_that_died_while_idle():
    with SandboxPool(1, confinement=CONFINEMENT) as pool:
        idle = pool._ready[0]
        idle._proc.kill()
        idle._proc.wait(5)
        with pool.sandbox() as fresh:
            assert fresh is not idle
            assert fresh.eval("1 + 1") == 2


# --------------------------------------------------------------------------- asyncio that never wedges

import os  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402

from sandbox_vm import _spawn  # noqa: E402

from escape_util import server_pid, zombies_of  # noqa: E402


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _live_sandboxes() -> int:
    return _spawn.stats().get("live", 0)


def _settle(live_before: int, fds_before: int, timeout: float = 20.0) -> tuple[int, int]:
    """Wait until the sandboxes made since are reaped; returns (live, fds) then."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if _live_sandboxes() <= live_before and _fds() <= fds_before:
            break
        time.sleep(0.05)
    return _live_sandboxes(), _fds()


class Lookup:
    """An async capability that itself needs the loop's default executor."""

    @expose
    async def fetch(self, key):
        await asyncio.to_thread(time.sleep, 0.002)
        await asyncio.get_running_loop().getaddrinfo("localhost", None)
        return key.upper()

    @expose
    async def hang(self):
        await asyncio.sleep(3600)


def test_hundred_async_sandboxes_with_to_thread_and_random_cancellation():
    server_pid()
    lookup = Lookup()
    live0, fds0 = _live_sandboxes(), _fds()
    rng = random.Random(20261201)

    async def tenant(i):
        async with AsyncSandbox({"lookup": lookup}, confinement=CONFINEMENT) as sb:
            for j in range(3):
                assert await sb.eval(f"lookup.fetch('t{i}.{j}')") == f"T{i}.{j}"
            return i

    async def main():
        loop = asyncio.get_running_loop()
        tasks = [asyncio.ensure_future(tenant(i)) for i in range(100)]
        doomed = rng.sample(range(100), 35)
        for i in doomed:  # cancelled anywhere: while starting, in a call, while closing
            loop.call_later(rng.uniform(0.0, 1.5), tasks[i].cancel)
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 120)
        # after all that, a new sandbox starts and answers at once
        async with AsyncSandbox(confinement=CONFINEMENT) as sb:
            assert await asyncio.wait_for(sb.eval("6 * 7"), 30) == 42
        return results

    results = asyncio.run(main())
    finished = [r for r in results if isinstance(r, int)]
    failures = [r for r in results if not isinstance(r, (int, asyncio.CancelledError))]
    assert not failures, failures[:3]
    assert len(finished) >= 65
    live, fds = _settle(live0, fds0)
    assert live <= live0, f"{live - live0} sandbox processes left running"
    assert fds <= fds0, f"{fds - fds0} file descriptors leaked"
    assert not zombies_of(server_pid())


def test_a_slow_tenant_does_not_delay_another():
    async def main():
        sandboxes = [AsyncSandbox(confinement=CONFINEMENT) for _ in range(9)]
        await asyncio.gather(*(sb.start() for sb in sandboxes))
        try:
            slow = [asyncio.ensure_future(sb.exec("import time\ntime.sleep(1.5)")) for sb in sandboxes[:8]]
            await asyncio.sleep(0.2)  # all eight are busy now
            assert await sandboxes[8].eval("1 + 1") == 2
            assert not any(t.done() for t in slow)  # it did not wait behind them
            await asyncio.gather(*slow)
        finally:
            for sb in sandboxes:
                await sb.close()

    asyncio.run(main())


def test_wall_limit_fires_while_an_async_capability_is_pending():
    async def main():
        async with AsyncSandbox({"lookup": Lookup()}, confinement=CONFINEMENT,
                                limits=capbridge.Limits(wall_seconds=0.5)) as sb:
            with pytest.raises(capbridge.SandboxTimeout, match="wall_seconds"):
                await asyncio.wait_for(sb.eval("lookup.hang()"), 30)
            assert not sb.alive
        async with AsyncSandbox({"lookup": Lookup()}, confinement=CONFINEMENT) as sb:
            sb.sandbox.interrupt_grace = 5.0
            with pytest.raises(capbridge.CallTimeout):
                await asyncio.wait_for(sb.eval("lookup.hang()", timeout=0.3), 30)
            assert sb.alive and await sb.eval("lookup.fetch('x')") == "X"
            with sb.deadline(0.3):  # the same through a deadline block
                with pytest.raises(capbridge.CallTimeout):
                    await asyncio.wait_for(sb.exec("lookup.hang()"), 30)
            assert await sb.eval("'alive'") == "alive"

    asyncio.run(main())


def test_cancelling_start_leaves_nothing_behind():
    server_pid()
    live0, fds0 = _live_sandboxes(), _fds()
    rng = random.Random(7)

    async def main():
        for _ in range(20):
            sb = AsyncSandbox(confinement=CONFINEMENT)
            task = asyncio.ensure_future(sb.start())
            await asyncio.sleep(rng.uniform(0.0, 0.02))
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                assert not sb.alive
            else:
                await sb.close()

    asyncio.run(main())
    live, fds = _settle(live0, fds0)
    assert live <= live0, f"{live - live0} sandbox processes left running"
    assert fds <= fds0, f"{fds - fds0} file descriptors leaked"


def test_cancelling_a_call_interrupts_it():
    async def main():
        async with AsyncSandbox(confinement=CONFINEMENT) as sb:
            sb.sandbox.interrupt_grace = 5.0
            task = asyncio.ensure_future(sb.exec("n = 0\nwhile True:\n    n += 1"))
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await asyncio.wait_for(sb.eval("n > 0"), 30) is True  # interrupted, state kept
            run = await sb.execute("print('hi')\n3")
            assert (run.value, run.stdout) == (3, "hi\n")

    asyncio.run(main())


# --------------------------------------------------------------------------- pools


def test_pool_churn_with_kills_and_per_checkout_grants():
    with SandboxPool(3, confinement=CONFINEMENT) as pool:
        for i in range(24):
            if i % 4 == 1:  # idle ones die; they must never be handed out
                end = time.monotonic() + 10
                while pool.stats()["ready"] < 3 and time.monotonic() < end:
                    time.sleep(0.005)
                with pool._cond:
                    victims = list(pool._ready)
                for victim in victims:
                    victim._proc.kill()
                for victim in victims:
                    end = time.monotonic() + 10
                    while victim._proc.running() and time.monotonic() < end:
                        time.sleep(0.005)
            out, err = [], []
            with pool.sandbox(grants={"tag": i, "feed": Feed()}, stdout=out.append, stderr=err.append) as sb:
                assert sb.alive
                assert sb.eval("tag") == i
                assert sb.eval("'tag' in globals() and feed.plain(1)") == 2
                sb.exec("import sys\nprint('out', tag)\nprint('err', tag, file=sys.stderr)")
                if i % 5 == 0:
                    sb.kill()  # a checkout that ends badly
            assert "".join(out) == f"out {i}\n" and "".join(err) == f"err {i}\n"
        stats = pool.stats()
        assert stats["handed_out"] == 24 and stats["in_use"] == 0
        assert stats["replaced_dead"] >= 6
        assert stats["healthy"] and stats["last_error"] is None


def test_pool_setup_runs_before_hand_out():
    calls = []

    def setup(sb):
        calls.append(sb.pid)
        sb.exec("import json\nready = json.dumps([1])")

    with SandboxPool(1, setup=setup, confinement=CONFINEMENT) as pool:
        with pool.sandbox() as sb:
            assert sb.eval("ready") == "[1]"
            assert sb.pid in calls


def test_pool_reports_a_failing_setup():
    def setup(sb):
        raise RuntimeError("no warm-up today")

    with pytest.raises(RuntimeError, match="no warm-up"):
        SandboxPool(1, setup=setup, confinement=CONFINEMENT)


def test_pooled_async_sandbox_awaits_async_capabilities():
    async def main():
        with SandboxPool(2, grants={"feed": Feed()}, confinement=CONFINEMENT) as pool:
            async with pool.async_sandbox(grants={"lookup": Lookup()}) as sb:
                assert await sb.eval("feed.fetch('p')") == "P"
                assert await sb.eval("lookup.fetch('q')") == "Q"
                pid = sb.sandbox.pid
            assert not sb.alive
            async with pool.async_sandbox() as again:
                assert again.sandbox.pid != pid
                assert await again.eval("'lookup' in globals()") is False
            assert pool.stats()["in_use"] == 0

    asyncio.run(main())


def test_closing_leaks_no_fds_and_no_zombies():
    server_pid()
    live0, fds0 = _live_sandboxes(), _fds()
    for _ in range(20):
        with capbridge.Sandbox(confinement=CONFINEMENT) as sb:
            sb.eval("1")
    with SandboxPool(2, confinement=CONFINEMENT) as pool:
        for _ in range(10):
            with pool.sandbox() as sb:
                sb.eval("1")
    live, fds = _settle(live0, fds0)
    assert live <= live0 and fds <= fds0, (live - live0, fds - fds0)
    assert not zombies_of(server_pid())
