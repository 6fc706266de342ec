"""sandbox_vm._record: frozen records behave as frozen dataclasses do."""

from __future__ import annotations

import copy
import pickle

import pytest

from sandbox_vm import ExitStatus, SandboxConfig
from sandbox_vm._record import FrozenInstanceError, record


@record(uncompared=("note",))
class Point:
    x: int
    y: int = 0
    note: str = ""

    def __post_init__(self) -> None:
        if self.x < 0:
            raise ValueError("x must not be negative")


def test_init_takes_fields_by_position_or_name_with_defaults():
    assert (Point(1).x, Point(1).y, Point(1, 2).y, Point(x=3, y=4).x) == (1, 0, 2, 3)
    with pytest.raises(TypeError):
        Point()
    with pytest.raises(TypeError):
        Point(1, z=2)


def test_post_init_validates():
    with pytest.raises(ValueError, match="negative"):
        Point(-1)


def test_repr_eq_hash():
    assert repr(Point(1, 2, "a")) == "Point(x=1, y=2, note='a')"
    assert Point(1, 2, "a") == Point(1, 2, "b") and hash(Point(1, 2, "a")) == hash(Point(1, 2, "b"))
    assert Point(1, 2) != Point(2, 1)
    assert Point(1) != (1, 0, "") and Point(1).__eq__((1, 0, "")) is NotImplemented
    nan = float("nan")
    assert Point(1, nan) == Point(1, nan)  # fields compared as tuples are: identity first


def test_frozen():
    p = Point(1)
    with pytest.raises(FrozenInstanceError):
        p.x = 2
    with pytest.raises(AttributeError):
        del p.y
    with pytest.raises(AttributeError):
        p.other = 1


def test_pickle_and_copy_round_trip():
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        assert pickle.loads(pickle.dumps(Point(1, 2, "n"), proto)) == Point(1, 2, "n")
    assert copy.deepcopy(Point(5)) == Point(5) and copy.copy(Point(5)) == Point(5)


def test_match_args():
    match Point(1, 2):
        case Point(a, b):
            assert (a, b) == (1, 2)


def test_non_default_after_default_is_refused():
    with pytest.raises(TypeError, match="follows a default"):
        @record
        class Bad:
            a: int = 0
            b: int


def test_sandbox_config_and_exit_status_keep_their_dataclass_behaviour():
    config = SandboxConfig(memory_mb=64, env=(("A", "1"),))
    assert config == SandboxConfig(memory_mb=64, env=(("A", "1"),)) and hash(config) == hash(pickle.loads(pickle.dumps(config)))
    assert repr(SandboxConfig()).startswith("SandboxConfig(confinement='strict', memory_mb=512, cpu_seconds=60, ")
    with pytest.raises(ValueError, match="confinement must be one of"):
        SandboxConfig(confinement="loose")
    with pytest.raises(AttributeError):
        config.memory_mb = 1
    # cpu_seconds is shown but not compared
    assert ExitStatus(0, cpu_seconds=1.0) == ExitStatus(0, cpu_seconds=2.0)
    assert repr(ExitStatus(signal=9)) == "ExitStatus(exitcode=None, signal=9, cpu_seconds=None)"
