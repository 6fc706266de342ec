"""A coverage-guided fuzz target for the host's decoder (atheris).

Run it with ``python tests/fuzz/run.py --minutes 10`` (``pip install atheris``). Every
input is decoded as a body from the sandbox by a host session holding one export;
anything but a clean result or ProtocolError is a finding (atheris reports it and
writes the input to ``crash-*``).
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
        import capbridge._host_session  # noqa: F401

    session = _session()

    def one_input(data: bytes) -> None:
        try:
            session.decode(data)
        except ProtocolError:
            pass

    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
