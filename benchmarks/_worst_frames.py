"""Adversarial frames for ``decode_worst.py``, built inside the attacking sandbox.

Each builder returns a RETURN body of about ``size`` bytes answering the host's
question being served (``hostile.HQID``, filled in by the attacker as it writes), so
the host decodes it as the answer to its own call. Loaded into the sandbox next to
``tests/hostile.py`` (as ``hostile``); the host only reads the list of names.
"""

from __future__ import annotations

import struct

import hostile as H

P61 = (1 << 61) - 1
CASES: dict = {}


def case(name: str, what: str):
    def register(fn):
        CASES[name] = (what, fn)
        return fn
    return register


BLOB = -1  # a string or bytes of 64 KiB or more: outside frames


def framed(parts: list) -> bytes:
    """PROTO and ``parts`` (``(data, step)``: ``data`` may be cut every ``step`` bytes,
    0 for never, ``BLOB`` for a value written outside frames) and STOP, framed as the
    pickler frames: a new frame once one holds 64 KiB, none under 4 bytes."""
    out = [H.PROTO]
    cur: list = []
    size = 0

    def commit() -> None:
        nonlocal size
        data = b"".join(cur)
        if len(data) >= 4:
            out.append(H.FRAME + struct.pack("<Q", len(data)))
        out.append(data)
        cur.clear()
        size = 0

    for data, step in parts + [(H.STOP, 0)]:
        if step == BLOB:
            commit()
            out.append(data)
            continue
        pos = 0
        while step and len(data) - pos + size > H.FRAME_TARGET:
            cut = pos + -(-(H.FRAME_TARGET - size) // step) * step
            cur.append(data[pos:cut])
            pos = cut
            commit()
        cur.append(data[pos:])
        size += len(data) - pos
        if size >= H.FRAME_TARGET:
            commit()
    commit()
    return b"".join(out)


RETURN, RAISE = bytes([H.T_RETURN]), bytes([H.T_RAISE])


def answer(*parts) -> bytes:
    return RETURN + H.HQID + framed(list(parts))


def count(size: int, unit: bytes, extra: int = 64) -> int:
    return max(4, (size - extra) // len(unit))


def filled(size: int, unit: bytes, head: bytes = H.MARK, tail: bytes = H.TUPLE) -> bytes:
    return answer((head, 0), (unit * count(size, unit), len(unit)), (tail, 0))


def batches(unit: bytes, op: bytes, size: int) -> list:
    """Parts filling the container just written with ``unit`` to about ``size`` bytes,
    1000 at a time (as the pickler)."""
    units = max(1, (size - 64) // len(unit))
    out = []
    while units:
        n = min(1000, units)
        out += [(H.MARK, 0), (unit * n, len(unit)), (op, 0)]
        units -= n
    return out


# --------------------------------------------------------------------------- issue 7


@case("mark_pop_tuple", "MARK POP TUPLE a million times (was: a million-deep tuple, host SIGSEGV)")
def _(size):
    unit = H.MARK + H.POP + H.TUPLE
    return answer((H.EMPTY_TUPLE, 0), (unit * count(size, unit), 3))


@case("deep_tuple_in_set", "a tuple nested once per byte, as a set item (was: C stack overflow hashing it)")
def _(size):
    return answer((H.EMPTY_SET + H.MARK + H.EMPTY_TUPLE, 0), (H.TUPLE1 * (size - 80), 1), (H.ADDITEMS, 0))


@case("int_hash_flood", "a set of ints k*(2**61-1), all hashing to 0 (was: GIL held 9-15 s)")
def _(size):
    keys = b"".join(H.i(k * P61) for k in range(1, 1001))
    return answer((H.EMPTY_SET, 0), *[(H.MARK + keys + H.ADDITEMS, 0)] * max(1, (size - 64) // (len(keys) + 2)))


@case("fraction_gcd", "Fraction records with parts at the 4096-bit limit (was: seconds of gcd)")
def _(size):
    return filled(size, H.vrec("Fraction", H.tup(H.i((1 << 4095) - 1), H.i((1 << 4095) - 3))))


@case("empty_sets", "one byte, one empty set (was: 243x host memory)")
def _(size):
    return filled(size, H.EMPTY_SET)


@case("empty_dicts", "empty dicts filling a list")
def _(size):
    return answer((H.EMPTY_LIST, 0), *batches(H.EMPTY_DICT, H.APPENDS, size))


@case("lists_of_lists", "[[[]] * 1000] * N written out in full (was: 1.1 GB and 15 s for 16 MB)")
def _(size):
    inner = H.EMPTY_LIST + H.MARK + H.EMPTY_LIST * 1000 + H.APPENDS
    return answer((H.EMPTY_LIST, 0), *batches(inner, H.APPENDS, size))


@case("raise_big_message", "RAISE error data with a message far over its bound (was: 330 MB from 1.2 MB)")
def _(size):
    text = b"m" * (size - 200)
    return RAISE + H.HQID + framed([(H.MARK + H.s("ValueError") + H.EMPTY_TUPLE, 0),
                                    (H.BINUNICODE + struct.pack("<I", len(text)) + text, BLOB),
                                    (H.s("") + H.EMPTY_DICT + H.TUPLE, 0)])


# --------------------------------------------------------------------------- found here


@case("small_lists", "[[1, 2], ...]: the densest containers the batch rules allow")
def _(size):
    return answer((H.EMPTY_LIST, 0), *batches(H.EMPTY_LIST + H.MARK + H.i(1) + H.i(2) + H.APPENDS, H.APPENDS, size))


@case("one_tuples", "(None,) repeated: two bytes, one tuple")
def _(size):
    return answer((H.EMPTY_LIST, 0), *batches(H.NONE + H.TUPLE1, H.APPENDS, size))


@case("two_char_strs", "two-character strings: the costliest string per byte")
def _(size):
    return filled(size, H.s("ab"))


@case("free_scalars", "1 and None alternating: shared objects, only a stack slot each")
def _(size):
    return filled(size, H.i(1) + H.NONE)


@case("datetime_records", "datetimes in Europe/Paris: value records")
def _(size):
    return filled(size, H.vrec("datetime", H.tup(H.s("2024-01-02T03:04:05"), H.i(0),
                                                 H.tup(H.s("zi"), H.s("Europe/Paris")))))


@case("host_refs", "('r', id) handles to a host capability")
def _(size):
    return filled(size, H.ref(H.CAP_ID))


@case("interface_bombs", "sandbox capabilities, each with a new 2047-member interface")
def _(size):
    members = H.MARK + b"".join(H.member("m%d" % j) for j in range(2047)) + H.TUPLE
    one = len(H.cref(1, 1, H.descriptor(methods=members)))
    units = [(H.cref(100_000 + k, 100_000 + k, H.descriptor(methods=members)), 0) for k in range(max(4, (size - 64) // one))]
    return answer((H.MARK, 0), *units, (H.TUPLE, 0))


@case("surrogate_string", "one string of lone surrogates (slow to decode)")
def _(size):
    data = b"\xed\xa0\x80" * ((size - 80) // 3)
    return answer((H.BINUNICODE + struct.pack("<I", len(data)) + data, BLOB))


@case("astral_string", "ASCII with one 4-byte character at the end: 4x in host memory")
def _(size):
    data = b"a" * (size - 84) + "\U0001f600".encode()
    return answer((H.BINUNICODE + struct.pack("<I", len(data)) + data, BLOB))


@case("big_tuple_key", "one set item: a tuple of a value per byte (hashing it is one long C call)")
def _(size):
    return answer((H.EMPTY_SET + H.MARK + H.MARK, 0), (H.NONE * (size - 80), 1), (H.TUPLE + H.ADDITEMS, 0))


@case("bulk_bytes", "honest: one bytes value filling the frame")
def _(size):
    return answer((H.BINBYTES + struct.pack("<I", size - 80) + b"\0" * (size - 80), BLOB))
