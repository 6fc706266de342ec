"""Exceptions rebuilt from the plain data that crossed the boundary."""

from __future__ import annotations

import builtins
from typing import Any

from . import _errors
from ._errors import ProtocolError, RemoteError

__all__ = ["error_from_data", "RemoteTraceback"]

_SCALARS = (type(None), bool, int, float, str, bytes)


class RemoteTraceback(Exception):
    """Carries the other side's traceback as text (shown as the cause)."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return "\n\n" + self.tb


_MAX_FRAMES = 64


def _check_frames(frames: Any) -> bool:
    if type(frames) is not tuple or len(frames) > _MAX_FRAMES:
        return False
    for f in frames:
        if (type(f) is not tuple or len(f) != 3 or type(f[0]) is not str or len(f[0]) > 300
                or type(f[1]) is not int or not 0 <= f[1] <= 1_000_000
                or type(f[2]) is not str or len(f[2]) > 200 or not f[2].isprintable()):
            return False
    return True


def _traceback_from_frames(frames: Any) -> Any:
    """A real traceback of the sandbox's frames (tblib), so a host traceback shows
    where in the sandbox the error happened; None if the data is not usable."""
    if not _check_frames(frames) or not frames:
        return None
    try:
        from tblib import Traceback

        node = None
        for filename, lineno, name in reversed(frames):
            node = {
                "tb_frame": {"f_globals": {"__name__": "<sandbox>", "__file__": filename},
                             "f_locals": {}, "f_code": {"co_filename": filename, "co_name": name},
                             "f_lineno": lineno},
                "tb_lineno": lineno,
                "tb_next": node,
            }
        return Traceback.from_dict(node).as_traceback()
    except Exception:
        return None


def check_error_data(data: Any) -> tuple:
    if (
        type(data) is not tuple
        or len(data) != 5
        or type(data[0]) is not str
        or type(data[1]) is not tuple
        or type(data[2]) is not str
        or type(data[3]) is not str
        or type(data[4]) is not dict
        or len(data[0]) > 200
        or len(data[2]) > 65536
        or len(data[3]) > 262144
        or any(type(a) not in _SCALARS for a in data[1])
    ):
        raise ProtocolError("malformed error data")
    return data


def error_from_data(data: Any, *, trusted: bool) -> BaseException:
    """The exception a caller sees for error ``data`` from the other side.

    From the sandbox (``trusted=False``): always :class:`RemoteError` carrying type
    name, message and traceback text. From the host (inside the sandbox): the same
    built-in or capbridge exception type with its args; other types as RemoteError.
    """
    if not trusted:
        name, _args, message, tb, extra = check_error_data(data)
        err = RemoteError(name, message, tb)
        if tb:
            err.__cause__ = RemoteTraceback(tb)
        frames = extra.get("frames")
        if frames is not None:
            traceback = _traceback_from_frames(frames)
            if traceback is not None:
                err = err.with_traceback(traceback)
        return err
    name, args, message, tb, extra = data
    cls = getattr(builtins, name, None)
    if not (isinstance(cls, type) and issubclass(cls, BaseException)):
        cls = getattr(_errors, name, None) if name in _errors.__all__ else None
    exc: BaseException
    if cls is None or cls is RemoteError:
        exc = RemoteError(name, message, tb)
    else:
        try:
            exc = cls(*args)
        except Exception:
            exc = RemoteError(name, message, tb)
        else:
            if isinstance(exc, OSError):
                for attr in ("filename", "filename2"):
                    if attr in extra:
                        try:
                            setattr(exc, attr, extra[attr])
                        except Exception:
                            pass
    if tb:
        exc.__cause__ = RemoteTraceback(tb)
    return exc
