"""Helpers for testing code that uses capbridge.

:func:`pair` connects two ends of the real protocol inside one process: a host end
(checked decoder, exposure rules enforced) and a sandbox end served by a thread.
Use it to unit-test capabilities without starting a process; it confines nothing.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from ._channel import Channel
from ._errors_data import error_from_data
from ._protocol import Op
from ._host_session import HostSession
from ._sandbox_session import SandboxSession

__all__ = ["Pair", "pair"]


class Pair:
    """Both ends of an in-process connection.

    ``host`` and ``sandbox`` are the two :class:`~capbridge._channel.Channel` objects;
    :meth:`host_call` calls an object the sandbox end registered with
    :meth:`sandbox_export`, and :meth:`sandbox_call` calls the host's exports the
    other way.
    """

    def __init__(self, host_bootstrap: Any = None, *, max_frame: int = 64 * 1024 * 1024) -> None:
        a_r, a_w = os.pipe()  # host -> sandbox
        b_r, b_w = os.pipe()  # sandbox -> host
        self._fds = (a_r, a_w, b_r, b_w)
        self.host_session = HostSession(max_frame=max_frame)
        self.sandbox_session = SandboxSession(max_frame=max_frame, bootstrap=host_bootstrap)
        self.host = Channel(self.host_session, b_r, a_w)
        self.sandbox = Channel(self.sandbox_session, a_r, b_w,
                               raise_error=lambda d: error_from_data(d, trusted=True))
        self._thread = threading.Thread(target=self._serve, name="capbridge-test-sandbox", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            self.sandbox.serve_forever()
        except BaseException:
            pass

    def call_bootstrap(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call a method of the sandbox end's bootstrap object from the host end."""
        return self.host.call(0, int(Op.CALL), name, args, kwargs)

    def close(self) -> None:
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._thread.join(2)

    def __enter__(self) -> "Pair":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def pair(bootstrap: Any = None, **kwargs: Any) -> Pair:
    """Connect a host end and a sandbox end in this process (no confinement)."""
    return Pair(bootstrap, **kwargs)
