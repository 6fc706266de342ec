"""Clock, Random and Logger, and the package's public surface."""

from __future__ import annotations

import datetime as dt
import logging
import time

import pytest

import host_apis
from capbridge._expose import interface_of
from host_apis import Clock, Logger, Random


def test_public_names():
    for name in host_apis.__all__:
        assert hasattr(host_apis, name), name
    assert {"VirtualFS", "Mount", "MemoryFS", "KeyValueStore", "Clock", "Random", "Logger"} <= set(host_apis.__all__)


def test_everything_is_a_capability(tmp_path):
    kv = host_apis.KeyValueStore(str(tmp_path / "kv"), "n")
    vfs = host_apis.VirtualFS({"/t": str(tmp_path)})
    objs = [Clock(), Random(1), Logger("t"), host_apis.MemoryFS(), kv, kv.batch(), vfs,
            host_apis.MemoryFS({"/a": "x"}).open("/a")]
    try:
        for obj in objs:
            assert interface_of(obj) is not None, type(obj)
        names = interface_of(vfs).exposed_names()
        assert "close" not in names  # host-only
        assert "close" not in interface_of(kv).exposed_names()
    finally:
        kv.close()
        vfs.close()


# ----------------------------------------------------------------------------- Clock


def test_clock_times():
    c = Clock()
    assert abs(c.time() - time.time()) < 1
    m1 = c.monotonic()
    assert c.monotonic() >= m1
    now = c.now()
    assert now.tzinfo is dt.timezone.utc and abs(now.timestamp() - time.time()) < 1
    coarse = Clock(resolution=1.0)
    assert coarse.time() == int(coarse.time())


def test_clock_sleep_bounds():
    c = Clock(max_sleep=0.05, max_total_sleep=0.12)
    t0 = time.monotonic()
    c.sleep(0.05)
    assert time.monotonic() - t0 >= 0.045
    with pytest.raises(ValueError):
        c.sleep(0.06)  # over the per-call bound: refused without sleeping
    for bad in (-1, float("nan")):
        with pytest.raises(ValueError):
            c.sleep(bad)
    with pytest.raises(TypeError):
        c.sleep("1")  # type: ignore[arg-type]
    c.sleep(0.05)
    assert c.sleep_remaining() == pytest.approx(0.02)
    t0 = time.monotonic()
    with pytest.raises(PermissionError):
        c.sleep(0.05)  # total budget exhausted
    assert time.monotonic() - t0 < 0.04
    c.sleep(0.01)
    assert Clock(max_total_sleep=None).sleep_remaining() is None


# ----------------------------------------------------------------------------- Random


def test_random_seeded_is_reproducible():
    a, b = Random(42), Random(42)
    seq_a = [a.random(), a.randint(1, 100), a.choice("abcdef"), a.bytes(8), a.shuffle([1, 2, 3, 4]),
             a.sample(range(50), 3), a.uniform(1, 2), a.randrange(0, 100, 5), a.getrandbits(64)]
    seq_b = [b.random(), b.randint(1, 100), b.choice("abcdef"), b.bytes(8), b.shuffle([1, 2, 3, 4]),
             b.sample(range(50), 3), b.uniform(1, 2), b.randrange(0, 100, 5), b.getrandbits(64)]
    assert seq_a == seq_b
    assert Random(1).random() != Random(2).random()
    assert sorted(a.shuffle([3, 1, 2])) == [1, 2, 3]


def test_random_unseeded_and_bounds():
    r = Random()
    assert not r.seeded and len(r.bytes(32)) == 32 and r.bytes(32) != r.bytes(32)
    assert 1 <= r.randint(1, 6) <= 6
    with pytest.raises(ValueError):
        r.bytes(host_apis._random.MAX_RANDOM_BYTES + 1)
    with pytest.raises(ValueError):
        r.bytes(-1)
    with pytest.raises(ValueError):
        r.getrandbits(10**9)
    with pytest.raises(TypeError):
        Random(object())  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- Logger


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def _logger(caplog, **kw):
    caplog.set_level(logging.DEBUG, logger="sandbox.test")
    log = Logger("sandbox.test", **kw)
    clock = FakeClock()
    log._clock = clock
    log._last = clock.t
    return log, clock


def test_logger_records_and_sanitises(caplog):
    log, _ = _logger(caplog, rate=None, max_message_bytes=32)
    assert log.info("hello") is True
    log.warning("line1\nFAKE ENTRY\r\x1b[31m")
    log.error("x" * 100)
    log.log("DEBUG", {"not": "a string"})
    log.log(99, "clamped")
    msgs = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert msgs[0] == (logging.INFO, "hello")
    assert msgs[1] == (logging.WARNING, "line1\\nFAKE ENTRY\\r\\x1b[31m")
    assert msgs[2][1].startswith("x" * 32) and "68 bytes cut" in msgs[2][1]
    assert msgs[3] == (logging.DEBUG, "{'not': 'a string'}")
    assert msgs[4] == (logging.CRITICAL, "clamped")
    assert all("\n" not in m for _, m in msgs)
    with pytest.raises(ValueError):
        log.log("LOUD", "x")


def test_logger_rate_limit_with_summary(caplog):
    log, clock = _logger(caplog, rate=5)
    results = [log.info(f"m{i}") for i in range(100)]
    assert results.count(True) == 5 and log.dropped == 95
    assert len(caplog.records) == 5
    clock.t += 1.0  # five more tokens
    assert log.info("after") is True
    texts = [r.getMessage() for r in caplog.records]
    assert texts[5] == "sandbox logger 'sandbox.test' dropped 95 message(s) (rate limit)"
    assert caplog.records[5].levelno == logging.WARNING
    assert texts[6] == "after"
    assert sum("dropped" in t for t in texts) == 1
    for _ in range(10):
        log.info("burst")
    log.flush()
    assert caplog.records[-1].getMessage().endswith("dropped 6 message(s) (rate limit)")
    log.flush()  # nothing new: no second summary
    assert caplog.records[-1].getMessage().endswith("dropped 6 message(s) (rate limit)")


def test_logger_validation():
    with pytest.raises(ValueError):
        Logger("x", rate=0)
    with pytest.raises(ValueError):
        Logger("x", max_message_bytes=1)
