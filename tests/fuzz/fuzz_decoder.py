"""A coverage-guided fuzz target for the host's decoder (atheris).

Run it with ``python tests/fuzz/run.py --minutes 10`` (``pip install -e '.[fuzz]'``).
Every input is decoded as a body from the sandbox by a host session holding one
export; anything but a clean result or ProtocolError is a finding, and so is a small
reader (``small_call``, ``small_answer``) returning other than what ``decode`` returns
(atheris reports it and writes the input to ``crash-*``).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _session():
    from capbridge._host_session import HostSession

    class Obj:
        pass

    s = HostSession()
    obj = Obj()
    s.tables.exports.export(obj, obj, None)
    return s


def main() -> None:
    import atheris

    with atheris.instrument_imports():
        from capbridge import ProtocolError
        import capbridge._decoder  # noqa: F401
        import capbridge._host_session  # noqa: F401  (instrumented)

    from capbridge._decoder import NOT_SMALL, decode, small_answer, small_call
    from capbridge._protocol import split

    session = _session()

    def one_input(data: bytes) -> None:
        try:
            session.decode(data)
        except ProtocolError:
            pass
        # Whenever a small reader returns a value, decode() returns the same one.
        try:
            start = split(data)[1]
        except ProtocolError:
            return
        for reader, none in ((small_answer, NOT_SMALL), (small_call, None)):
            got = reader(data, start)
            if got is not none:
                want = decode(data, lambda pid: None, session.budget, start)
                if type(got) is not type(want) or repr(got) != repr(want):
                    raise AssertionError(f"{reader.__name__} read {got!r}, decode {want!r}")

    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
