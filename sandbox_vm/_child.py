"""The first code a new sandbox process runs: lock down, then serve the channel."""

from __future__ import annotations

import os
import sys
TYPE_CHECKING = False
if TYPE_CHECKING:  # (typing is not imported at run time: it costs start-up)
    from typing import NoReturn

from ._config import SandboxConfig


def child_main(rfd: int, wfd: int, config: SandboxConfig) -> NoReturn:
    """Lock this process down as ``config`` says, then run the in-sandbox runtime.

    ``rfd``/``wfd`` are the channel; fds 1 and 2 are already the output pipes and
    fd 0 is ``/dev/null`` or closed. Never returns.
    """
    from . import _lockdown, _runtime

    try:
        report = _lockdown.lock_down(config, keep_fds=(0, 1, 2, rfd, wfd))
    except _lockdown.LockdownFailed as failure:
        _runtime.report_failure(wfd, failure)
        os._exit(70)
    except BaseException as exc:  # pragma: no cover - a bug in lockdown itself
        _runtime.report_failure(wfd, _lockdown.LockdownFailed("lockdown", 0, repr(exc)))
        os._exit(70)
    code = 0
    try:
        code = _runtime.serve(rfd, wfd, config, report)
    except BaseException:  # pragma: no cover
        code = 71
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:
            pass
        os._exit(code)


if __name__ == "__main__":  # started as a plain subprocess (see _spawn)
    import pickle

    _rfd, _wfd = int(sys.argv[1]), int(sys.argv[2])
    _cfg = pickle.loads(bytes.fromhex(sys.argv[3]))
    child_main(_rfd, _wfd, _cfg)
