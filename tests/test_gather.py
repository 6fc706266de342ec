"""capbridge.gather: many sandboxes called at once from one host thread."""

from __future__ import annotations

import pytest

import capbridge
from capbridge import CallTimeout, RemoteError, expose

from conftest import make_sandbox


class Counter:
    def __init__(self) -> None:
        self.n = 0

    @expose
    def bump(self) -> int:
        self.n += 1
        return self.n


SRC = """
def work(k):
    for _ in range(3):
        c.bump()
    return k * 10

def boom():
    raise ValueError("no")

def spin():
    while True:
        pass
"""


@pytest.fixture
def boxes():
    made = []
    counters = [Counter() for _ in range(3)]
    for c in counters:
        made.append(make_sandbox({"c": c}))
    mods = [sb.load(SRC, "m") for sb in made]
    yield made, mods, counters
    for sb in made:
        sb.close()


def test_results_in_order_and_callbacks_served(boxes):
    _, mods, counters = boxes
    assert capbridge.gather([(m.work, k) for k, m in enumerate(mods)]) == [0, 10, 20]
    assert [c.n for c in counters] == [3, 3, 3]


def test_first_error_is_raised_after_all_calls_end(boxes):
    _, mods, counters = boxes
    with pytest.raises(RemoteError, match="ValueError"):
        capbridge.gather([(mods[0].work, 1), mods[1].boom, (mods[2].work, 2)])
    assert counters[0].n == 3 and counters[2].n == 3


def test_return_exceptions_puts_them_in_place(boxes):
    _, mods, _ = boxes
    out = capbridge.gather([(mods[0].work, 1), mods[1].boom], return_exceptions=True)
    assert out[0] == 10 and isinstance(out[1], RemoteError)


def test_timeout_interrupts_a_slow_sandbox_and_the_others_answer(boxes):
    made, mods, _ = boxes
    out = capbridge.gather([(mods[0].work, 1), mods[1].spin, (mods[2].work, 3)], timeout=0.5,
                           return_exceptions=True)
    assert out[0] == 10 and out[2] == 30
    assert isinstance(out[1], CallTimeout)
    assert made[1].alive and mods[1].work(4) == 40  # interrupted, not killed


def test_bad_arguments():
    assert capbridge.gather([]) == []
    with pytest.raises(TypeError):
        capbridge.gather([42])
    with pytest.raises(TypeError):
        capbridge.gather([()])
    with pytest.raises(ValueError):
        capbridge.gather([print], timeout=0)
