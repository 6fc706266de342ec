"""The in-sandbox runtime: serves the host's requests over the channel.

It runs after lockdown. Its first frame is HELLO with the lockdown report; then it
serves calls until the host closes the channel. The host reaches it as export 0.
"""

from __future__ import annotations

import io
import os
import sys
import types
TYPE_CHECKING = False
if TYPE_CHECKING:  # (typing is not imported at run time: it costs start-up)
    from typing import Any

from ._config import SandboxConfig

__all__ = ["serve", "report_failure", "Runtime"]


def _hello(version: int, report: Any) -> bytes:
    from capbridge._protocol import frame
    from capbridge._sandbox_session import hello_body

    return frame(hello_body(version, report))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def report_failure(wfd: int, failure: Any) -> None:
    """Tell the host that lockdown failed (HELLO with the failing step)."""
    from capbridge._protocol import PROTOCOL_VERSION

    try:
        _write_all(wfd, _hello(PROTOCOL_VERSION, ("failed", str(failure.step), int(failure.errno), str(failure.hint))))
    except OSError:
        pass


class Runtime:
    """Export 0 of the sandbox: what the ``Sandbox`` front door calls."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        sys.argv = [""]  # the fork server's argv names host paths
        _install_interactive_builtins()
        self.main = types.ModuleType("__main__")
        self.main.__dict__["__builtins__"] = __builtins__
        sys.modules["__main__"] = self.main
        self.loaded: list[types.ModuleType] = []
        import capbridge

        self.grants: dict[str, Any] = {}
        capbridge.grants = self.grants  # type: ignore[attr-defined]

    def grant(self, grants: dict[str, Any]) -> None:
        self.grants.update(grants)
        self.main.__dict__.update(grants)
        for mod in self.loaded:
            mod.__dict__.update(grants)

    def exec(self, source: str, filename: str) -> None:
        lines = _remember_source(filename, source)
        try:
            code = compile(source, filename, "exec")
            remember_code_lines(code, lines)
            exec(code, self.main.__dict__)
        finally:
            _flush()

    def eval(self, expression: str) -> Any:
        try:
            code = compile(expression, "<sandbox>", "eval")
            remember_code_lines(code, expression.splitlines(keepends=True))
            return eval(code, self.main.__dict__)
        finally:
            _flush()

    def execute(self, source: str) -> Any:
        """Run statements like the interactive prompt: the value of a final
        expression statement is the result (None without one)."""
        import ast

        filename = "<sandbox>"
        lines = _remember_source(filename, source)
        try:
            tree = compile(source, filename, "exec", ast.PyCF_ONLY_AST)
            last = None
            if tree.body and isinstance(tree.body[-1], ast.Expr):
                last = ast.Expression(tree.body.pop().value)
            namespace = self.main.__dict__
            code = compile(tree, filename, "exec")
            remember_code_lines(code, lines)
            exec(code, namespace)
            if last is None:
                return None
            code = compile(last, filename, "eval")
            remember_code_lines(code, lines)
            return eval(code, namespace)
        finally:
            _flush()

    def call(self, shipped: tuple) -> Any:
        fn, args, kwargs = shipped
        try:
            return fn(*args, **kwargs)
        finally:
            _flush()

    def load(self, source: str, name: str) -> types.ModuleType:
        mod = types.ModuleType(name)
        mod.__dict__.update(self.grants)
        mod.__file__ = f"<{name}>"
        lines = _remember_source(mod.__file__, source)
        sys.modules[name] = mod
        try:
            code = compile(source, f"<{name}>", "exec")
            remember_code_lines(code, lines)
            exec(code, mod.__dict__)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        finally:
            _flush()
        self.loaded.append(mod)
        return mod

    def install_fs(self, name: str) -> None:
        from . import _fsshim

        _fsshim.install(self.grants[name])

    def value_types(self, specs: tuple) -> None:
        from capbridge._expose import value_type_named
        from capbridge._sandbox_session import make_lookalike

        for name, fields, is_tuple in specs:
            vt = value_type_named(name)
            if vt is None or vt.fields != tuple(fields):
                make_lookalike(name, tuple(fields), is_tuple)

    def ping(self) -> int:
        return os.getpid()


_remember: Any = None


def remember_code_lines(code: types.CodeType, lines: list[str]) -> None:
    """Tie ``lines`` to ``code`` and the code compiled within it, so its frames show
    their own lines even after a later run reuses the file name."""
    global _remember
    if _remember is None:
        from capbridge._sandbox_session import remember_code_lines as remember

        _remember = remember
    _remember(code, lines)


def _remember_source(filename: str, source: str) -> list[str]:
    """Let tracebacks show the lines of code the host sent (it has no file)."""
    import linecache

    lines = source.splitlines(keepends=True)
    linecache.cache[filename] = (len(source), None, lines, filename)
    return lines


class _Help:
    """help() as at an interactive prompt (the sandbox starts without ``site``)."""

    def __repr__(self) -> str:
        return "Type help(object) for help about object."

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        import pydoc

        return pydoc.help(*args, **kwargs)


def _install_interactive_builtins() -> None:
    import builtins

    if not hasattr(builtins, "help"):
        builtins.help = _Help()  # type: ignore[attr-defined]


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


def serve(rfd: int, wfd: int, config: SandboxConfig, report: Any) -> int:
    """Send HELLO, then serve the host until it closes the channel; exit code."""
    from capbridge._channel import Channel
    from capbridge._errors_data import error_from_data
    from capbridge._protocol import PROTOCOL_VERSION
    from capbridge._decoder import Budget
    from capbridge._sandbox_session import SandboxSession

    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8",
                                  errors="backslashreplace", line_buffering=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8",
                                  errors="backslashreplace", line_buffering=True)
    sys.stdin = io.TextIOWrapper(io.BytesIO(b""), encoding="utf-8")
    layers = tuple((l.layer, bool(l.in_force), str(l.detail)) for l in getattr(report, "layers", ()))
    _write_all(wfd, _hello(PROTOCOL_VERSION, ("ok", os.getpid(), layers)))
    runtime = Runtime(config)
    session = SandboxSession(max_frame=config.max_message_bytes, debug=config.debug, bootstrap=runtime,
                             host_budget=Budget(max_bytes=config.max_decoded_bytes))
    chan = Channel(session, rfd, wfd, raise_error=lambda data: error_from_data(data, trusted=True))
    from capbridge import _interrupt

    _interrupt.install(chan.interrupt)
    import gc

    gc.freeze()  # start-up objects never need collecting; keeps collections short
    try:
        chan.serve_forever()
    except (EOFError, OSError):
        return 0
    except BaseException:
        return 0
    return 0
