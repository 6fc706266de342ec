"""Exceptions rebuilt from the plain data that crossed the boundary.

Error data is ``(type name, args, message, traceback text, extra)``; from the sandbox
every part is bounded and checked. Sandbox frames become a real traceback on the host
(so a host traceback ends with the sandbox's frames), with filenames marked
``<sandbox:...>``: linecache and every tool built on it leave such names alone, so
formatting a sandbox traceback never makes the host open a file the sandbox named.
The source lines shown are the ones the sandbox sent, kept in a small, bounded cache.
"""

from __future__ import annotations

import builtins
import collections
import linecache
import threading
import types
TYPE_CHECKING = False
if TYPE_CHECKING:  # (typing is not imported at run time: it costs start-up)
    from typing import Any

from . import _errors
from ._errors import CapabilityError, ProtocolError, RemoteError, RevokedError

__all__ = ["error_from_data", "RemoteTraceback", "check_error_data", "sandbox_filename"]

_SCALARS = (type(None), bool, int, float, str, bytes)


class RemoteTraceback(Exception):
    """Carries the other side's traceback as text (shown as the cause)."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return "\n\n" + self.tb


MAX_FRAMES = 64
MAX_ARGS = 16
MAX_NAME = 200
MAX_MESSAGE = 65536
MAX_TRACEBACK = 262144
MAX_PATH = 4096
MAX_LINE = 1000
#: Line numbers beyond this are shown without their source line.
MAX_LINENO = 10_000
_EXTRA_KEYS = frozenset({"frames", "filename", "filename2", "boundary"})


def sandbox_filename(name: str) -> str:
    """How a filename from the sandbox appears on the host."""
    inner = name[1:-1] if name.startswith("<") and name.endswith(">") else name
    return f"<sandbox:{inner}>"


def _check_frames(frames: Any) -> bool:
    if type(frames) is not tuple or len(frames) > MAX_FRAMES:
        return False
    for f in frames:
        if (type(f) is not tuple or len(f) != 4 or type(f[0]) is not str or len(f[0]) > 300
                or type(f[1]) is not int or not 0 <= f[1] <= 1_000_000
                or type(f[2]) is not str or len(f[2]) > 200 or not f[2].isprintable()
                or type(f[3]) is not str or len(f[3]) > MAX_LINE):
            return False
    return True


class _SourceLines:
    """The source lines sandboxes sent, under their marked names, in linecache.

    Bounded: at most ``files`` names are kept (the oldest go first), and only lines
    up to :data:`MAX_LINENO`.
    """

    def __init__(self, files: int = 64) -> None:
        self.files = files
        self._names: "collections.OrderedDict[str, None]" = collections.OrderedDict()
        self._lock = threading.Lock()

    def add(self, filename: str, lineno: int, line: str) -> None:
        if not line or not 0 < lineno <= MAX_LINENO:
            return
        with self._lock:
            entry = linecache.cache.get(filename)
            lines = entry[2] if entry is not None and len(entry) == 4 and filename in self._names else []
            if len(lines) < lineno:
                lines = lines + ["\n"] * (lineno - len(lines))
            # Indented by one space: with the stub frames of _traceback_from_frames, the
            # line then counts as covered whole, and no carets are drawn under it.
            lines[lineno - 1] = " " + line + "\n"
            linecache.cache[filename] = (0, None, lines, filename)
            self._names[filename] = None
            self._names.move_to_end(filename)
            while len(self._names) > self.files:
                old, _ = self._names.popitem(last=False)
                linecache.cache.pop(old, None)


_SOURCE = _SourceLines()


class _Maker(Exception):
    pass


_STUBS: dict[int, Any] = {}


def _stub(width: int) -> Any:
    """Code that raises in a statement wider than ``width`` columns and two lines
    long: a traceback then draws no carets under the sandbox's source line (the
    stub's columns say nothing about where in that line the error was)."""
    width = (width // 64 + 1) * 64
    code = _STUBS.get(width)
    if code is None:
        code = _STUBS[width] = compile("raise (_cb_maker" + " " * width + "\n)", "<sandbox>", "exec")
    return code


def _traceback_from_frames(frames: Any) -> Any:
    """A real traceback of the sandbox's frames, so a host traceback shows where in
    the sandbox the error happened; None if the data is not usable.

    Each frame is a tiny code object renamed to the sandbox's file and function and
    run once to raise (as tblib does it): only names and line numbers come from the
    sandbox, never code."""
    if not _check_frames(frames) or not frames:
        return None
    try:
        made = []
        for filename, lineno, name, line in frames:
            shown = sandbox_filename(filename)
            _SOURCE.add(shown, lineno, line)
            code = _stub(len(line)).replace(co_firstlineno=max(1, lineno), co_filename=shown, co_name=name)
            try:
                exec(code, {"__name__": "<sandbox>", "_cb_maker": _Maker})
            except _Maker as exc:
                made.append(exc.__traceback__.tb_next)  # type: ignore[union-attr]
                del exc
        node = None
        for tb in reversed(made):
            node = types.TracebackType(node, tb.tb_frame, tb.tb_lasti, tb.tb_lineno)
        return node
    except Exception:
        return None


def check_error_data(data: Any) -> tuple:
    """Check error data from the sandbox; returns it, or raises ProtocolError."""
    if (
        type(data) is not tuple
        or len(data) != 5
        or type(data[0]) is not str
        or type(data[1]) is not tuple
        or type(data[2]) is not str
        or type(data[3]) is not str
        or type(data[4]) is not dict
        or len(data[0]) > MAX_NAME
        or len(data[1]) > MAX_ARGS
        or len(data[2]) > MAX_MESSAGE
        or len(data[3]) > MAX_TRACEBACK
        or len(data[4]) > len(_EXTRA_KEYS)
        or any(type(a) not in _SCALARS or (type(a) in (str, bytes) and len(a) > MAX_MESSAGE) for a in data[1])
    ):
        raise ProtocolError("malformed error data")
    for key, value in data[4].items():
        if key not in _EXTRA_KEYS:
            raise ProtocolError("malformed error data: unknown extra field")
        if key == "frames":
            if not _check_frames(value):
                raise ProtocolError("malformed error data: bad frames")
        elif key == "boundary":
            if value is not True:
                raise ProtocolError("malformed error data: bad boundary flag")
        elif not (type(value) is int or (type(value) in (str, bytes) and len(value) <= MAX_PATH)):
            raise ProtocolError("malformed error data: bad file name")
    return data


#: Errors the sandbox's runtime raises when a value cannot cross to the host (marked
#: ``boundary`` in the data): they keep their type on the host. A sandbox could mark
#: its own errors so, which only changes the type the host sees.
_BOUNDARY_ERRORS = {"CapabilityError": CapabilityError, "RevokedError": RevokedError}


def error_from_data(data: Any, *, trusted: bool) -> BaseException:
    """The exception a caller sees for error ``data`` from the other side.

    From the sandbox (``trusted=False``): :class:`RemoteError` carrying type name,
    message and traceback text, with the sandbox's frames as its traceback
    (a CapabilityError the runtime raised because a value could not cross keeps its
    type). An exception object (made by
    the host's own decoder) is returned as it is. From the host (inside the sandbox):
    the same built-in or capbridge exception type with its args; other types as
    RemoteError.
    """
    if isinstance(data, BaseException):
        return data
    if not trusted:
        name, _args, message, tb, extra = check_error_data(data)
        cls = _BOUNDARY_ERRORS.get(name) if extra.get("boundary") is True else None
        err: BaseException = cls(message) if cls is not None else RemoteError(name, message, tb)
        frames = extra.get("frames")
        traceback = _traceback_from_frames(frames) if frames is not None else None
        if traceback is not None:
            err = err.with_traceback(traceback)
        elif tb and frames != ():  # no frames at all: the sandbox kept none of its own
            err.__cause__ = RemoteTraceback(tb)
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
