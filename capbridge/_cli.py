"""The ``capbridge`` command line: ``run``, ``shell`` and ``check``.

This module is also imported *inside* the sandbox: :func:`_sandbox_prepare` and
:func:`_sandbox_run` are shipped there by reference with :meth:`Sandbox.call`, so its
top level imports only the standard library.
"""

from __future__ import annotations

import argparse
import codeop
import os
import posixpath
import signal
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

__all__ = ["EXIT_CODES", "main"]

EX_USAGE = 2
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_TIMEOUT = 124
EX_MEMORY = 125
EX_CPU = 126
EX_PROTOCOL = 127
EX_SIGNAL_BASE = 128
EX_INTERRUPTED = 130

#: Exit codes of ``capbridge run`` / ``shell`` other than the script's own.
EXIT_CODES: dict[int, str] = {
    1: "the script raised an uncaught exception (its traceback is printed)",
    EX_USAGE: "bad command line (unknown option, bad HOST_DIR:VIRTUAL_DIR, unreadable FILE, "
              "a --grant that cannot be made)",
    EX_UNAVAILABLE: "the confinement asked for is unavailable here (see `capbridge check`)",
    EX_SOFTWARE: "capbridge itself failed",
    EX_TIMEOUT: "wall-clock limit hit (--timeout); the sandbox was killed",
    EX_MEMORY: "memory limit hit (--memory); the sandbox was killed",
    EX_CPU: "CPU limit hit (--cpu); the sandbox was killed",
    EX_PROTOCOL: "protocol violation: the sandbox sent something forbidden; it was killed",
    EX_SIGNAL_BASE: "the sandbox process was killed by signal N (a crash)",
    EX_INTERRUPTED: "interrupted with Ctrl-C",
}


def _exit_code_text() -> str:
    lines = ["exit codes:", "  0..255  the script's own: sys.exit(N), or 0 when it ends normally"]
    for code, text in EXIT_CODES.items():
        label = f"{code}+N" if code == EX_SIGNAL_BASE else str(code)
        lines.append(f"  {label:<7} {text}")
    lines.append("A one-line reason prefixed 'capbridge: ' goes to stderr for every code capbridge chooses.")
    return "\n".join(lines)


# ---------------------------------------------------------------------- in the sandbox


class _Quitter:
    """``exit`` / ``quit`` for a sandbox started without ``site``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Use {self.name}() or Ctrl-D (i.e. EOF) to exit"

    def __call__(self, code: Any = None) -> None:
        raise SystemExit(code)


def _sandbox_prepare(argv: list[str], cwd: str | None, filename: str | None, source: str | None) -> None:
    """Inside the sandbox: set ``sys.argv``, the virtual cwd, ``__file__`` and ``exit``."""
    import builtins
    import linecache

    sys.argv = list(argv)
    if cwd is not None:
        os.chdir(cwd)
    for name in ("exit", "quit"):
        if not hasattr(builtins, name):
            setattr(builtins, name, _Quitter(name))
    if filename is not None and source is not None:
        sys.modules["__main__"].__dict__["__file__"] = filename
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)


def _sandbox_run(source: str, filename: str, mode: str) -> tuple[str, Any, Any]:
    """Inside the sandbox: compile and run ``source`` in ``__main__``.

    Returns ``("ok", None, None)``, ``("exit", code, message)`` for ``SystemExit`` or
    ``("error", traceback_text, type_name)``. ``MemoryError`` propagates so the host
    reports the memory limit.
    """
    namespace = sys.modules["__main__"].__dict__
    try:
        exec(compile(source, filename, mode, dont_inherit=True), namespace)
    except SystemExit as exc:
        code = exc.code
        if code is None or isinstance(code, int):
            return ("exit", int(code or 0), None)
        return ("exit", 1, str(code))
    except MemoryError:
        raise
    except BaseException as exc:  # noqa: BLE001 - every failure of user code is reported
        tb = exc.__traceback__
        if tb is not None and tb.tb_frame.f_code is _sandbox_run.__code__:
            tb = tb.tb_next
        text = "".join(traceback.format_exception(type(exc), exc, tb))
        return ("error", text, type(exc).__name__)
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
    return ("ok", None, None)


# ---------------------------------------------------------------------- host side


class UsageError(Exception):
    """A command-line mistake: printed as one line, exit code 2."""


def _say(message: str) -> None:
    message = message.strip()
    message = message.removeprefix("capbridge: ")
    print(f"capbridge: {message}", file=sys.stderr, flush=True)


def _limit(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        if text.lower() in ("none", "off", "unlimited"):
            return None
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive number or 'none', not {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive number or 'none', not {text!r}")
        return value

    parse.__name__ = kind.__name__
    return parse


class _MountAction(argparse.Action):
    """Collects ``--ro`` and ``--rw`` in command-line order as ``(flag, spec)``."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        mounts = list(getattr(namespace, self.dest, None) or [])
        mounts.append((option_string, values))
        setattr(namespace, self.dest, mounts)


def _parse_mounts(items: Sequence[tuple[str, str]]) -> list[tuple[str, str, bool]]:
    """``[(virtual_dir, real_host_dir, writable)]`` from ``--ro``/``--rw`` values."""
    out: list[tuple[str, str, bool]] = []
    seen: set[str] = set()
    for flag, spec in items:
        host, sep, virtual = spec.rpartition(":")
        if not sep or not host or not virtual:
            raise UsageError(f"{flag} {spec}: expected HOST_DIR:VIRTUAL_DIR, e.g. {flag} ./data:/data")
        if not virtual.startswith("/"):
            raise UsageError(f"{flag} {spec}: the virtual directory must be absolute (start with '/'), "
                             f"not {virtual!r}")
        if "\x00" in virtual or ".." in virtual.split("/"):
            raise UsageError(f"{flag} {spec}: the virtual directory may not contain '..', got {virtual!r}")
        vdir = "/" + posixpath.normpath(virtual).lstrip("/")
        if vdir == "/.":
            vdir = "/"
        if vdir in seen:
            raise UsageError(f"{flag} {spec}: {vdir} is already mapped")
        seen.add(vdir)
        if not os.path.exists(host):
            raise UsageError(f"{flag} {spec}: no such directory on this machine: {host!r}")
        if not os.path.isdir(host):
            raise UsageError(f"{flag} {spec}: not a directory: {host!r}")
        if not os.access(host, os.R_OK | os.X_OK):
            raise UsageError(f"{flag} {spec}: cannot read directory {host!r}")
        out.append((vdir, os.path.realpath(host), flag == "--rw"))
    return out


def _make_fs(mounts: list[tuple[str, str, bool]]) -> Any:
    """A ``VirtualFS`` of the mounts whose ``open`` outside them is a ``PermissionError``."""
    import errno

    from host_apis import Mount, VirtualFS

    from ._expose import expose

    roots = [v for v, _, _ in mounts]

    def covered(path: str) -> bool:
        norm = "/" + posixpath.normpath(path).lstrip("/")
        for root in roots:
            if root == "/" or norm == root or norm.startswith(root + "/") or root.startswith(norm.rstrip("/") + "/"):
                return True
        return False

    class CommandLineFS(VirtualFS):
        """The directories given with --ro/--rw; nothing else can be opened."""

        @expose
        def open(self, path: str, mode: str = "rb") -> Any:
            """Open ``path`` under a mapped directory (binary ``mode``)."""
            if isinstance(path, str) and path.startswith("/") and not covered(path):
                raise PermissionError(errno.EACCES, "Permission denied (only the --ro/--rw directories "
                                      f"are reachable: {', '.join(roots)})", path)
            return super().open(path, mode)

    return CommandLineFS({v: Mount(h, writable=w) for v, h, w in mounts})


def _script_name(path: str, mounts: list[tuple[str, str, bool]]) -> str:
    """The script's name inside: its virtual path if it lies in a mount, else as given."""
    if path == "-":
        return "<stdin>"
    real = os.path.realpath(path)
    for vdir, host, _ in mounts:
        if real == host or real.startswith(host.rstrip("/") + "/"):
            return posixpath.join(vdir, os.path.relpath(real, host).replace(os.sep, "/"))
    return path


def _read_script(path: str) -> str:
    from importlib.util import decode_source

    try:
        if path == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as f:
                data = f.read()
        return decode_source(data)
    except OSError as exc:
        raise UsageError(f"cannot read script {path!r}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, SyntaxError) as exc:
        raise UsageError(f"cannot decode script {path!r}: {exc}") from None


def _open_sandbox(opts: argparse.Namespace, fs: Any, grants: dict[str, Any] | None = None) -> Any:
    """Start the sandbox for ``opts``; warnings become ``capbridge:`` lines on stderr."""
    from . import CapabilityError, Limits, Sandbox

    limits = Limits(memory_mb=opts.memory, cpu_seconds=opts.cpu, wall_seconds=opts.timeout,
                    max_output_kb=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            sb = Sandbox({"fs": fs} if fs is not None else None, limits=limits,
                         confinement=opts.confinement, allow_imports=tuple(opts.allow_import or ()),
                         preload=tuple(opts.preload or ()), stdout=sys.stdout, stderr=sys.stderr)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    try:
        for name, obj in (grants or {}).items():
            try:
                sb.grant(name, obj)
            except CapabilityError as exc:
                raise UsageError(f"--grant {name}=...: what the factory returned ({type(obj).__name__}) cannot be granted: {exc}") from None
    except BaseException:
        sb.close()
        raise
    for w in caught:
        _say(str(w.message))
    return sb


class _OnSigint:
    """Base of the context managers that take SIGINT for a while (main thread only)."""

    old: Any = None

    def _handler(self, signum: int, frame: Any) -> None:  # pragma: no cover - overridden
        raise KeyboardInterrupt

    def __enter__(self) -> Any:
        try:
            self.old = signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # not the main thread
            self.old = None
        return self

    def _restore(self) -> None:
        if self.old is not None:
            signal.signal(signal.SIGINT, self.old)


class _ForwardInterrupt(_OnSigint):
    """While a call runs: the first Ctrl-C interrupts the sandbox code, the second gives up."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.sent = False

    def _handler(self, signum: int, frame: Any) -> None:
        if self.sent:
            self.gave_up = True
            raise KeyboardInterrupt
        self.sent = True
        try:
            os.kill(self.pid, signal.SIGINT)
        except OSError:
            self.gave_up = True
            raise KeyboardInterrupt from None

    gave_up = False

    def __exit__(self, et: Any, ev: Any, tb: Any) -> None:
        self._restore()
        if self.gave_up and et is not None and not issubclass(et, KeyboardInterrupt):
            # The interrupt broke into the wait for the sandbox, which took it down:
            # what the person did was interrupt, and that is what ends the command.
            raise KeyboardInterrupt from None


class _HoldInterrupt(_OnSigint):
    """While the sandbox starts: a Ctrl-C is held until the start is done, then ends
    the command (a second one ends it at once)."""

    def __init__(self) -> None:
        self.pressed = 0

    def _handler(self, signum: int, frame: Any) -> None:
        self.pressed += 1
        if self.pressed > 1:
            raise KeyboardInterrupt

    def __exit__(self, et: Any, ev: Any, tb: Any) -> None:
        self._restore()
        if self.pressed and not (et is not None and issubclass(et, KeyboardInterrupt)):
            raise KeyboardInterrupt from None


class MalformedResult(Exception):
    """Sandbox code tampered with the runner and returned something else."""


def _checked(result: Any) -> tuple[str, Any, Any]:
    """``result`` of :func:`_sandbox_run` if it has the promised shape (the sandbox is untrusted)."""
    if type(result) is tuple and len(result) == 3:
        kind, value, extra = result
        if kind == "ok" and value is None and extra is None:
            return result
        if kind == "exit" and type(value) is int and (extra is None or type(extra) is str):
            return result
        if kind == "error" and type(value) is str and type(extra) is str:
            return result
    raise MalformedResult("the sandbox returned a malformed result (was capbridge's "
                          "runner replaced?)")


def _failure(exc: BaseException, opts: argparse.Namespace, what: str) -> tuple[int, str]:
    """The exit code and one-line reason for an error that ended the sandbox."""
    from . import (
        ConfinementUnavailable,
        CPULimitExceeded,
        MemoryLimitExceeded,
        ProtocolError,
        RemoteError,
        SandboxCrashed,
        SandboxTimeout,
    )

    if isinstance(exc, SandboxTimeout):
        return EX_TIMEOUT, f"timed out: {what} ran longer than --timeout {opts.timeout:g} s; the sandbox was killed"
    if isinstance(exc, MemoryLimitExceeded):
        limit = f"hit --memory {opts.memory} MB" if opts.memory is not None else "raised MemoryError"
        return EX_MEMORY, f"out of memory: the sandbox {limit}; it was killed"
    if isinstance(exc, CPULimitExceeded):
        return EX_CPU, f"CPU limit: the sandbox used up --cpu {opts.cpu:g} s of CPU time; it was killed"
    if isinstance(exc, ProtocolError):
        return EX_PROTOCOL, f"protocol violation: {exc}"
    if isinstance(exc, SandboxCrashed):
        if exc.signal is not None:
            return EX_SIGNAL_BASE + exc.signal, f"the sandbox crashed: {exc}"
        code = exc.exitcode if exc.exitcode is not None else EX_SOFTWARE
        return code, f"the sandbox process exited with code {code} while {what} ran"
    if isinstance(exc, ConfinementUnavailable):
        return EX_UNAVAILABLE, f"{exc} On the command line: --confinement best-effort."
    if isinstance(exc, RemoteError):
        text = (exc.remote_traceback or "").rstrip()
        return 1, (text + "\n" if text else "") + f"{exc.type_name}: {exc.message}"
    return EX_SOFTWARE, f"{type(exc).__name__}: {exc}"


# ---------------------------------------------------------------------- --grant NAME=module:factory

_GRANT_EXAMPLE = "e.g. --grant inventory=myapp.api:make_inventory"


def _parse_grant_spec(spec: str) -> tuple[str, str, str]:
    """``(name, module, attribute path)`` of ``NAME=module:factory``, or a UsageError."""
    name, eq, target = spec.partition("=")
    module, colon, attr = target.partition(":")
    if not (eq and colon and name and module and attr):
        raise UsageError(f"--grant {spec}: expected NAME=module:factory, {_GRANT_EXAMPLE}")
    import keyword

    if not name.isidentifier() or keyword.iskeyword(name):
        raise UsageError(f"--grant {spec}: the name must be a Python identifier, not {name!r}")
    for what, dotted in (("module", module), ("factory", attr)):
        if not all(part.isidentifier() for part in dotted.split(".")):
            raise UsageError(f"--grant {spec}: the {what} must be a dotted Python name, not {dotted!r}")
    return name, module, attr


def _print_user_traceback(exc: BaseException) -> None:
    """The traceback of ``exc`` without capbridge's and importlib's frames."""
    import importlib

    hidden = (os.path.dirname(os.path.abspath(__file__)) + os.sep, os.path.dirname(importlib.__file__) + os.sep,
              "<frozen importlib")
    te = traceback.TracebackException.from_exception(exc)
    te.stack = traceback.StackSummary.from_list([f for f in te.stack if not f.filename.startswith(hidden)])
    sys.stderr.write("".join(te.format()))


def _import_for_grant(spec: str, module: str) -> Any:
    import importlib

    if not {"", os.getcwd()} & set(sys.path):
        sys.path.insert(0, os.getcwd())  # the `capbridge` script does not search the current directory
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module == exc.name or module.startswith(exc.name + ".")):
            raise UsageError(f"--grant {spec}: no module named {exc.name!r} in the current directory "
                             f"({os.getcwd()}) or on sys.path") from None
        _print_user_traceback(exc)
        raise UsageError(f"--grant {spec}: importing {module} failed: {type(exc).__name__}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - the user's module failed: show its traceback
        _print_user_traceback(exc)
        raise UsageError(f"--grant {spec}: importing {module} failed: {type(exc).__name__}: {exc}") from None


def _load_factory(spec: str) -> tuple[str, Any]:
    """Import the factory named by ``spec`` on this machine, call it, return ``(name, result)``."""
    name, module, attr = _parse_grant_spec(spec)
    factory = _import_for_grant(spec, module)
    for part in attr.split("."):
        try:
            factory = getattr(factory, part)
        except AttributeError:
            raise UsageError(f"--grant {spec}: {module} has no attribute {attr!r}") from None
    if not callable(factory):
        raise UsageError(f"--grant {spec}: {module}:{attr} is not callable (its type is {type(factory).__name__}); "
                         "--grant calls it with no arguments and grants what it returns")
    try:
        return name, factory()
    except Exception as exc:  # noqa: BLE001 - the user's factory failed: show its traceback
        _print_user_traceback(exc)
        raise UsageError(f"--grant {spec}: {module}:{attr}() raised {type(exc).__name__}: {exc}") from None


def _factory_grants(specs: Sequence[str], mounts: list[tuple[str, str, bool]]) -> dict[str, Any]:
    """The objects of every ``--grant``, made on this machine before the sandbox starts."""
    grants: dict[str, Any] = {}
    for spec in specs:
        name = spec.partition("=")[0]
        if name in grants:
            raise UsageError(f"--grant {spec}: {name!r} is granted twice")
        if name == "fs" and mounts:
            raise UsageError(f"--grant {spec}: 'fs' is the file system of --ro/--rw; choose another name")
        name, obj = _load_factory(spec)
        grants[name] = obj
    return grants


def _default_cwd(opts: argparse.Namespace, mounts: list[tuple[str, str, bool]]) -> str | None:
    if opts.cwd is not None:
        if not mounts:
            raise UsageError("--cwd needs a file system: give --ro or --rw")
        if not opts.cwd.startswith("/"):
            raise UsageError(f"--cwd must be an absolute virtual path, not {opts.cwd!r}")
        return opts.cwd
    return mounts[0][0] if mounts else None


def _cmd_run(opts: argparse.Namespace) -> int:
    from . import CapbridgeError

    mounts = _parse_mounts(opts.mounts or ())
    cwd = _default_cwd(opts, mounts)
    source = _read_script(opts.file)
    filename = _script_name(opts.file, mounts)
    grants = _factory_grants(opts.grant or (), mounts)
    fs = _make_fs(mounts) if mounts else None
    sb = None
    try:
        with _HoldInterrupt():
            sb = _open_sandbox(opts, fs, grants)
            sb.call(_sandbox_prepare, [filename, *opts.args], cwd, filename, source)
        with _ForwardInterrupt(sb.pid):
            kind, value, extra = _checked(sb.call(_sandbox_run, source, filename, "exec"))
    except (CapbridgeError, KeyboardInterrupt, MalformedResult) as exc:
        return _ending(exc, sb, opts, "the script")
    finally:
        if sb is not None:
            sb.close()
        if fs is not None:
            fs.close()
    if kind == "exit":
        if extra:
            print(extra, file=sys.stderr, flush=True)
        return int(value)
    if kind == "error":
        sys.stderr.write(value)
        sys.stderr.flush()
        return EX_INTERRUPTED if extra == "KeyboardInterrupt" else 1
    return 0


def _lines(interactive: bool) -> Iterator[tuple[str | None, bool]]:
    """Yields ``(line, False)``; ``(None, True)`` after Ctrl-C at a prompt; ends at EOF."""
    more = False
    while True:
        prompt = ("... " if more else ">>> ") if interactive else ""
        try:
            line = input(prompt)
        except EOFError:
            if interactive:
                print(file=sys.stderr)
            return
        except KeyboardInterrupt:
            print("\nKeyboardInterrupt", file=sys.stderr)
            more = False
            yield None, True
            continue
        more = yield line, False  # type: ignore[misc]


class _LineEditing:
    """readline for the shell: Tab completion asked of the sandbox, history of this session.

    ``killed`` turns true when a second Ctrl-C during a completion killed the sandbox.
    """

    def __init__(self, sb: Any, readline: Any) -> None:
        from ._completion import ShellCompleter

        self.sb = sb
        self.killed = False
        readline.clear_history()
        readline.set_completer(ShellCompleter(self.ask, readline))
        readline.parse_and_bind("tab: complete")

    def ask(self, line: str, begidx: int, endidx: int) -> Any:
        from ._completion import candidates

        if self.killed:
            return []
        try:
            with _ForwardInterrupt(self.sb.pid):
                return self.sb.call(candidates, line, begidx, endidx)
        except KeyboardInterrupt:
            # readline swallows exceptions raised here: the shell loop ends on this flag.
            self.killed = True
            self.sb.kill()
            _say("interrupted; the sandbox was killed (press Enter)")
            return []


def _line_editing(sb: Any) -> _LineEditing | None:
    """Set up readline for an interactive shell; None where Python has no readline."""
    try:
        import readline
    except ImportError:
        return None
    return _LineEditing(sb, readline)


def _cmd_shell(opts: argparse.Namespace) -> int:
    from . import CapbridgeError

    mounts = _parse_mounts(opts.mounts or ())
    cwd = _default_cwd(opts, mounts)
    interactive = sys.stdin.isatty()
    grants = _factory_grants(opts.grant or (), mounts)
    fs = _make_fs(mounts) if mounts else None
    compiler = codeop.CommandCompiler()
    sb = None
    try:
        with _HoldInterrupt():
            sb = _open_sandbox(opts, fs, grants)
            sb.call(_sandbox_prepare, [""], cwd, None, None)
        editing = _line_editing(sb) if interactive else None
        if interactive:
            where = ", ".join(f"{v} ({'rw' if w else 'ro'})" for v, _, w in mounts) or "none"
            names = ", ".join(sorted([*grants, *(["fs"] if fs is not None else [])])) or "none"
            print(f"capbridge shell: Python {sys.version.split()[0]} in a sandbox "
                  f"(confinement {opts.confinement}; files: {where}; grants: {names}).\n"
                  "Tab completes, help(name) documents a grant, Ctrl-C interrupts, Ctrl-D exits.",
                  file=sys.stderr)
        buffer: list[str] = []
        lines = _lines(interactive)
        item = next(lines, None)
        while item is not None:
            if editing is not None and editing.killed:
                return EX_INTERRUPTED
            line, interrupted = item
            source = None
            if interrupted:
                buffer = []
            else:
                buffer.append(line)  # type: ignore[arg-type]
                text = "\n".join(buffer)
                try:
                    if compiler(text, "<stdin>", "single") is not None:
                        source = text
                except (SyntaxError, OverflowError, ValueError) as exc:
                    sys.stderr.write("".join(traceback.format_exception_only(type(exc), exc)))
                    buffer = []
            if source is not None:
                buffer = []
                code = _shell_run(sb, source)
                if code is not None:
                    return code
            try:
                item = lines.send(bool(buffer))
            except StopIteration:
                item = None
        if buffer:  # EOF after an unfinished block: run what there is
            code = _shell_run(sb, "\n".join(buffer) + "\n")
            if code is not None:
                return code
        return 0
    except (CapbridgeError, KeyboardInterrupt, MalformedResult) as exc:
        return _ending(exc, sb, opts, "a statement")
    finally:
        if sb is not None:
            sb.close()
        if fs is not None:
            fs.close()


def _ending(exc: BaseException, sb: Any, opts: Any, what: str) -> int:
    """Exit code (and one line on stderr) for a run or shell that ended with ``exc``."""
    if isinstance(exc, KeyboardInterrupt):
        if sb is not None:
            sb.kill()
        _say("interrupted; the sandbox was killed")
        return EX_INTERRUPTED
    if isinstance(exc, MalformedResult):
        _say(str(exc))
        return EX_SOFTWARE
    code, reason = _failure(exc, opts, what)
    _say(reason)
    return code


def _shell_run(sb: Any, source: str) -> int | None:
    """Run one complete statement; an exit code if the shell should end."""
    with _ForwardInterrupt(sb.pid):
        kind, value, extra = _checked(sb.call(_sandbox_run, source, "<stdin>", "single"))
    if kind == "exit":
        if extra:
            print(extra, file=sys.stderr, flush=True)
        return int(value)
    if kind == "error":
        sys.stderr.write(value)
        sys.stderr.flush()
    return None


def _cmd_check(opts: argparse.Namespace) -> int:
    from sandbox_vm._probe import format_table, probe

    access = _check_access(opts.allow_import) if opts.allow_import else None
    statuses = probe()
    print(format_table(statuses))
    if access is not None:
        from sandbox_vm._packages import describe

        print()
        print(describe(access))
    missing = [s for s in statuses if not s.available and s.used_by_strict == "required"]
    return 1 if missing else 0


def _check_access(names: list[str]) -> Any:
    """What ``--allow-import names`` would make readable (a usage error if a name is unknown)."""
    from sandbox_vm._packages import check_names, resolve, sandbox_path

    path = sandbox_path()
    try:
        checked = check_names(tuple(names), "--allow-import", path)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return resolve(checked, path)


# ---------------------------------------------------------------------- argument parsing

_SANDBOX_OPTIONS_HELP = """\
file system:
  Without --ro/--rw the script reaches no files except the standard library (read-only).
  With them it gets a virtual file system (granted as the global `fs`): open(), os and
  pathlib see only the mapped directories. open() of a path outside them raises
  PermissionError naming the mapped directories; os.stat(), os.listdir() and
  os.path.exists() find nothing there (FileNotFoundError, False). Symbolic links inside
  them are not followed.

application objects:
  --grant inventory=myapp:make_inventory imports myapp on this machine (from the current
  directory or sys.path), calls make_inventory() here and grants what it returns as the
  global `inventory`: an object with @expose'd methods, a function, or plain data.
"""


def _add_sandbox_options(p: argparse.ArgumentParser) -> None:
    from ._sandbox import Limits

    d = Limits()
    g = p.add_argument_group("sandbox options")
    g.add_argument("--ro", dest="mounts", action=_MountAction, metavar="HOST_DIR:VIRTUAL_DIR",
                   help="map a host directory read-only at an absolute virtual path (repeatable)")
    g.add_argument("--rw", dest="mounts", action=_MountAction, metavar="HOST_DIR:VIRTUAL_DIR",
                   help="map a host directory read-write (repeatable)")
    g.add_argument("--cwd", metavar="VIRTUAL_DIR",
                   help="virtual working directory (default: the first mapped directory, else /)")
    g.add_argument("--memory", type=_limit(int), default=d.memory_mb, metavar="MB",
                   help=f"memory of the sandbox process in MB, or 'none' (default {d.memory_mb})")
    g.add_argument("--cpu", type=_limit(float), default=d.cpu_seconds, metavar="S",
                   help=f"CPU seconds over the sandbox's life, or 'none' (default {d.cpu_seconds:g})")
    g.add_argument("--timeout", type=_limit(float), default=d.wall_seconds, metavar="S",
                   help=f"wall-clock seconds (run: the whole script; shell: each statement), "
                        f"or 'none' (default {d.wall_seconds:g})")
    g.add_argument("--grant", action="append", metavar="NAME=module:factory",
                   help="import module on this machine (from the current directory or sys.path), call "
                        "factory() and grant the result as NAME (repeatable)")
    g.add_argument("--allow-import", action="append", metavar="PKG",
                   help="let the sandbox import this installed package and its dependencies "
                        "(import name; repeatable; `capbridge check --allow-import PKG` shows what opens)")
    g.add_argument("--preload", action="append", metavar="MODULE",
                   help="import this module once in a template process before the sandbox starts, "
                        "so it starts imported (implies --allow-import; repeatable)")
    g.add_argument("--confinement", choices=("strict", "best-effort", "none"), default="strict",
                   help="strict (default) refuses to start without rlimits, Landlock and seccomp; "
                        "best-effort uses what the kernel offers and says what is missing; "
                        "none is NO confinement, for development only")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="capbridge",
        description="Run untrusted Python in a kernel-confined sandbox process.",
        epilog=_exit_code_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run = sub.add_parser(
        "run", help="run a Python script in a sandbox",
        usage="capbridge run [options] FILE [ARGS ...] [options]",
        description=(
            "Run FILE in a sandbox with sys.argv = [FILE, *ARGS] and __name__ == '__main__'.\n"
            "FILE is read on this machine; it need not be inside a mapped directory (if it is,\n"
            "it is known inside by its virtual path). '-' reads it from stdin. The script's\n"
            "stdout and stderr stream to this terminal unchanged and uncapped; its stdin is\n"
            "empty. It may import the standard library and --allow-import packages only.\n"
            "capbridge's options may come before or after FILE; other words after FILE, and\n"
            "everything after '--', are the script's arguments."
        ),
        epilog=_SANDBOX_OPTIONS_HELP + "\n" + _exit_code_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    run.add_argument("file", metavar="FILE", help="the script to run ('-' for stdin)")
    run.add_argument("args", metavar="ARGS", nargs="*", default=[], help="arguments for the script")
    _add_sandbox_options(run)

    shell = sub.add_parser(
        "shell", help="an interactive Python prompt inside a sandbox",
        description=(
            "An interactive Python prompt whose code runs in a sandbox. Lines are edited and\n"
            "collected on this machine (readline when available) and each complete statement\n"
            "runs in the sandbox's __main__, which persists; expression results print with\n"
            "repr(), errors print their sandbox traceback. Tab completes names, attributes and\n"
            "module names as the sandbox sees them (a grant's attributes come from its\n"
            "interface: Tab never calls the host object or runs a property); Up and Down recall\n"
            "this session's lines; help(name) shows a grant's host signatures and docstrings.\n"
            "Ctrl-C interrupts the running statement (twice: kills the sandbox), Ctrl-D or\n"
            "exit() ends the shell. With stdin not a terminal, statements are read from it\n"
            "without prompts."
        ),
        epilog=_SANDBOX_OPTIONS_HELP + "\n" + _exit_code_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_sandbox_options(shell)

    check = sub.add_parser(
        "check", help="show which confinement layers this machine provides",
        description=(
            "Print a table of confinement layers: whether each is available, whether\n"
            "confinement='strict' needs it, and why it is missing. With --allow-import, also\n"
            "print every path a sandbox allowed those packages may read, grouped by\n"
            "distribution (with its dependencies) and the shared libraries they load."
        ),
        epilog=("exit codes:\n  0  strict confinement is available\n  1  it is not (a required layer is missing)\n"
                "  2  an --allow-import name is not importable here"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("--allow-import", action="append", metavar="PKG",
                       help="show what allowing this package would make readable (repeatable)")
    return parser


_RUN_OPTIONS = {"-h": False, "--help": False, "--ro": True, "--rw": True, "--cwd": True, "--memory": True,
                "--cpu": True, "--timeout": True, "--allow-import": True, "--preload": True, "--grant": True, "--confinement": True}


def _split_run_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """Separate capbridge's options (anywhere before ``--``) from the script's arguments.

    Returns ``(argv for argparse, script arguments)``.
    """
    takes_value = _RUN_OPTIONS
    mine: list[str] = []
    script: list[str] = []
    file: str | None = None
    i = 0
    while i < len(argv):
        tok = argv[i]
        i += 1
        if tok == "--":
            rest = argv[i:]
            if file is None and rest:
                file, rest = rest[0], rest[1:]
            script.extend(rest)
            break
        name = tok.split("=", 1)[0]
        if tok.startswith("-") and tok != "-" and (name in takes_value or file is None):
            mine.append(tok)
            if takes_value.get(name) and "=" not in tok and i < len(argv):
                mine.append(argv[i])
                i += 1
        elif file is None:
            file = tok
        else:
            script.append(tok)
    if file is not None:
        mine += ["--", file]
    return mine, script


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``capbridge`` script; returns the exit code."""
    try:
        return _main(argv)
    except KeyboardInterrupt:  # before a sandbox exists (the commands handle it after)
        _say("interrupted")
        return EX_INTERRUPTED


def _main(argv: Sequence[str] | None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    script_args: list[str] | None = None
    if args and args[0] == "run":
        mine, script_args = _split_run_argv(args[1:])
        args = ["run", *mine]
    try:
        opts = parser.parse_args(args)
    except SystemExit as exc:
        return int(exc.code or 0) if isinstance(exc.code, int) or exc.code is None else EX_USAGE
    if script_args is not None:
        opts.args = script_args
    commands = {"run": _cmd_run, "shell": _cmd_shell, "check": _cmd_check}
    try:
        return commands[opts.command](opts)
    except UsageError as exc:
        _say(str(exc))
        return EX_USAGE


if __name__ == "__main__":
    sys.exit(main())
