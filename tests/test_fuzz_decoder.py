"""Seeded mutation fuzzing of the host's decoder: whatever the bytes, decoding either
succeeds or raises ProtocolError - never another exception, never a crash."""

import datetime as dt
import decimal
import io
import pickle
import random
import subprocess
import sys
import textwrap

from capbridge import ProtocolError
from capbridge._codec import Inert, encode_value_record
from capbridge._session import Session


def _fast(obj) -> bytes:
    buf = io.BytesIO()
    p = pickle.Pickler(buf, 5)
    p.fast = True

    def pid(o):
        if isinstance(o, Inert):
            return o.pid
        return encode_value_record(o)

    p.persistent_id = pid
    p.dump(obj)
    return buf.getvalue()


SEEDS = [
    _fast((2, 7, 42)),
    _fast((2, 7, "text" * 10)),
    _fast((1, 3, 0, 1, 0, "add", (1, 2.5, None, True, b"x"), {"k": [1, {2: (3,)}]})),
    _fast((1, 3, 1, 1, 0, "f", (Inert(("r", 1)), Inert(("c", 5, 1, None))), {})),
    _fast((2, 9, [dt.datetime(2024, 1, 2, tzinfo=dt.timezone.utc), decimal.Decimal("1.5"), 3j])),
    _fast((3, 4, ("ValueError", ("m",), "m", "tb", {"frames": (("f.py", 3, "g"),)}))),
    _fast((4, ((1, 1), (2, 3)))),
    _fast((2, 1, {frozenset({1, 2}): {"a", "b"}, "l": list(range(50))})),
]


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        pos = rng.randrange(len(b)) if b else 0
        if op == 0 and b:
            b[pos] = rng.randrange(256)
        elif op == 1:
            b.insert(pos, rng.randrange(256))
        elif op == 2 and b:
            del b[pos]
        elif op == 3 and b:
            other = rng.choice(SEEDS)
            cut = rng.randrange(len(other))
            b[pos:] = other[cut:]
        else:
            b[pos:pos] = bytes([rng.choice(b"rpqhgjc\x93R\x81b\x82\x85\x87tQ")]) + rng.randbytes(rng.randrange(5))
    return bytes(b)


class _Obj:
    pass


def _session() -> Session:
    s = Session(trusted_peer=False)
    obj = _Obj()
    s.tables.exports.export(obj, obj, None)  # export id 1, for ("r", 1) references
    return s


def test_mutated_bodies_only_ever_raise_protocol_error():
    rng = random.Random(20261125)
    session = _session()
    accepted = refused = 0
    for _ in range(20000):
        body = _mutate(rng, rng.choice(SEEDS))
        try:
            session.decode(body)
            accepted += 1
        except ProtocolError:
            refused += 1
    assert refused > 5000 and accepted > 200  # the fuzz really exercised both outcomes


def test_decoder_survives_in_a_separate_process():
    # Crashes (a segfault in C code) would kill pytest itself; check a batch in a child.
    code = textwrap.dedent(
        """
        import random, sys
        sys.path.insert(0, %r)
        import test_fuzz_decoder as t
        rng = random.Random(7)
        s = t._session()
        for _ in range(10000):
            try:
                s.decode(t._mutate(rng, rng.choice(t.SEEDS)))
            except t.ProtocolError:
                pass
        print("ok")
        """
    ) % (__import__("os").path.dirname(__file__),)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
