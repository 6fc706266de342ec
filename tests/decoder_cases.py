"""Bodies for the decoder's tests and its fuzz target: what the sandbox's own encoder
writes (seeds), and adversarial payloads that must be refused within budget."""

from __future__ import annotations

import datetime as dt
import decimal
import io
import pickle
import struct


class Ref:
    """A persistent id to write into a test body (``Ref(("r", 1))``)."""

    def __init__(self, pid: tuple) -> None:
        self.pid = pid


def fast_pickle(obj, *, refs: bool = True) -> bytes:
    """``obj`` pickled as the sandbox pickles it: protocol 5, no memo, frozensets (as
    sets) and other values as records, :class:`Ref` as the persistent id it holds."""
    from capbridge._codec import encode_value_record

    buf = io.BytesIO()
    p = pickle.Pickler(buf, 5)
    p.fast = True

    def pid(o):
        if isinstance(o, Ref):
            return o.pid
        if type(o) is frozenset:
            return ("v", "frozenset", set(o))
        return encode_value_record(o)

    p.persistent_id = pid
    p.dump(obj)
    return buf.getvalue()


def call_body(qid, name, args, kwargs=None, *, target=1, parent=0) -> bytes:
    from capbridge._protocol import CALL_HEADER

    return CALL_HEADER.pack(1, qid, parent, target, 0) + fast_pickle((name, tuple(args), kwargs or {}))


def return_body(qid, value) -> bytes:
    from capbridge._protocol import ANSWER_HEADER

    return ANSWER_HEADER.pack(2, qid) + fast_pickle(value)


SEED_VALUES = [
    42,
    "text" * 10,
    (1, 2.5, None, True, b"x", bytearray(b"y")),
    {"k": [1, {2: (3,)}], "s": {"a", "b"}, "f": frozenset({1, 2})},
    [dt.datetime(2024, 1, 2, tzinfo=dt.timezone.utc), decimal.Decimal("1.5"), 3j],
    list(range(300)),
    [x * 1.5 for x in range(40)],
    [None, True, False] * 20,
    2 ** 200,
    "é\U0001f600" * 20,
]


def seeds() -> list[bytes]:
    out = [return_body(7, v) for v in SEED_VALUES]
    out.append(call_body(3, "add", (1, Ref(("r", 1)), Ref(("c", 5, 1, None))), {"k": [1]}))
    out.append(call_body(3, "f", (Ref(("v", "UUID", 5)),)))
    return out


# --------------------------------------------------------------------------- adversarial payloads

K = b"K"
MARK, TUPLE, TUPLE1, EMPTY_TUPLE = b"(", b"t", b"\x85", b")"
EMPTY_LIST, APPENDS, APPEND = b"]", b"e", b"a"
EMPTY_DICT, SETITEMS = b"}", b"u"
EMPTY_SET, ADDITEMS = b"\x8f", b"\x90"
NONE = b"N"


def payload(ops: bytes) -> bytes:
    """A payload pickle of ``ops``, framed as the sandbox's pickler frames."""
    from hostile import body

    return body(ops)


def bigint(n: int) -> bytes:
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    if len(raw) < 256:
        return b"\x8a" + bytes([len(raw)]) + raw
    return b"\x8b" + struct.pack("<I", len(raw)) + raw


def _batches(items: list[bytes], op: bytes) -> bytes:
    """``items`` added to the container just written, 1000 at a time (as the pickler)."""
    return b"".join(MARK + b"".join(items[p:p + 1000]) + op for p in range(0, len(items), 1000))


def adversarial(size: int) -> dict[str, bytes]:
    """Payloads of about ``size`` bytes built to cost the host as much as possible."""
    colliding = [bigint(k * ((1 << 61) - 1)) for k in range(1, 1001)]
    per_batch = len(b"".join(colliding)) + 2
    out = {
        # one byte, one 216-byte set: refused by the memory budget
        "empty_sets": payload(MARK + EMPTY_SET * size + TUPLE),
        "empty_lists": payload(MARK + EMPTY_LIST * size + TUPLE),
        "empty_dicts": payload(EMPTY_LIST + _batches([EMPTY_DICT] * size, APPENDS)),
        # a million-deep tuple: refused at depth 101 before anything hashes it
        "deep_tuple": payload(EMPTY_TUPLE + TUPLE1 * (size - 4)),
        "deep_tuple_in_set": payload(EMPTY_SET + MARK + EMPTY_TUPLE + TUPLE1 * (size - 8) + ADDITEMS),
        # keys with one hash
        "hash_flood": payload(EMPTY_SET + _batches(colliding * max(1, size // per_batch), ADDITEMS)),
        # nested lists [[[]]*1000]*N written out in full (no memo)
        "lists_of_lists": payload(EMPTY_LIST + _batches(
            [EMPTY_LIST + MARK + EMPTY_LIST * 1000 + APPENDS] * (size // 1004), APPENDS)),
        # nones and small ints on the stack under one MARK
        "stack_of_nones": payload(MARK + NONE * (size - 4) + TUPLE),
        "ints_in_tuple": payload(MARK + (K + b"\x07") * ((size - 4) // 2) + TUPLE),
        # many one-key dicts (224 bytes from 6)
        "one_key_dicts": payload(EMPTY_LIST + _batches(
            [EMPTY_DICT + K + b"\x01" + K + b"\x02" + b"s"] * (size // 6), APPENDS)),
        # strings that widen to four bytes a character
        "wide_strings": payload(MARK + (b"\x8c\x07" + "\U0001f600".encode() + b"abc") * ((size - 4) // 9) + TUPLE),
        # huge ints, each at the size limit
        "big_ints": payload(MARK + bigint(1 << (8 * 8190)) * max(4, size // 8200) + TUPLE),
    }
    return out
