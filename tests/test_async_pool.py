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
