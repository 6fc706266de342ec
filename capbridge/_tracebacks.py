"""Tracebacks that end with the user's frames.

An exception leaving a public entry point (a :class:`Sandbox` method, a proxy, an
:class:`AsyncSandbox` coroutine, a pool, :func:`capbridge.gather`) passed through
capbridge's own code and the machinery it drives (its threads, the event loop's
futures, pickling). Those frames tell a user nothing, so each entry point catches
the exception, drops them from its traceback and every traceback it chains to, and
re-raises it with a bare ``raise`` (which does not add the entry point's frame
again). What is left: the caller's frames, then the user code the exception came
from - a host function capbridge called, or the sandbox's frames rebuilt from the
data it sent. ``debug=True`` keeps every frame.

Only the exception path pays for this; a call that returns runs no extra code.
"""

from __future__ import annotations

import os
import sys
import types

__all__ = ["trim", "strip_frames", "machinery_prefixes"]

_PREFIXES: tuple[str, ...] | None = None
#: How many chained exceptions (causes, contexts) are trimmed along with the first.
MAX_CHAIN = 16


def machinery_prefixes() -> tuple[str, ...]:
    """The file name prefixes of frames that are not the user's: capbridge,
    sandbox_vm, and the parts of the standard library they run calls through."""
    global _PREFIXES
    if _PREFIXES is None:
        here = os.path.dirname(os.path.abspath(__file__))
        stdlib = os.path.dirname(os.path.abspath(os.__file__))
        prefixes = [
            here + os.sep,
            os.path.join(os.path.dirname(here), "sandbox_vm") + os.sep,
            os.path.join(stdlib, "asyncio") + os.sep,
            os.path.join(stdlib, "concurrent") + os.sep,
            os.path.join(stdlib, "threading.py"),
            os.path.join(stdlib, "pickle.py"),
            os.path.join(stdlib, "copyreg.py"),
        ]
        cloudpickle = sys.modules.get("cloudpickle")
        where = getattr(cloudpickle, "__file__", None)
        if where:
            prefixes.append(os.path.dirname(os.path.abspath(where)) + os.sep)
        _PREFIXES = tuple(prefixes)
    return _PREFIXES


def _trimmed(tb: types.TracebackType | None, prefixes: tuple[str, ...]) -> types.TracebackType | None:
    kept = []
    while tb is not None:
        if not tb.tb_frame.f_code.co_filename.startswith(prefixes):
            kept.append(tb)
        tb = tb.tb_next
    node = None
    for t in reversed(kept):
        node = types.TracebackType(node, t.tb_frame, t.tb_lasti, t.tb_lineno)
    return node


def strip_frames(exc: BaseException, prefixes: tuple[str, ...]) -> None:
    """Drop the frames whose file name starts with one of ``prefixes`` from ``exc``'s
    traceback and from those of the exceptions it chains to (at most ``MAX_CHAIN``)."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo and len(seen) < MAX_CHAIN:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        tb = e.__traceback__
        if tb is not None:
            e.__traceback__ = _trimmed(tb, prefixes)
        for link in (e.__cause__, e.__context__):
            if link is not None:
                todo.append(link)


def trim(exc: BaseException, debug: bool = False) -> None:
    """Drop capbridge's frames from ``exc``'s traceback and from those of the
    exceptions it chains to; nothing when ``debug`` is true. Never raises."""
    if debug:
        return
    try:
        strip_frames(exc, machinery_prefixes())
    except Exception:  # pragma: no cover - trimming must never hide the real error
        pass
