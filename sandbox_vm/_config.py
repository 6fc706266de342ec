"""What the host asks of one sandbox process (plain data, picklable), and its checks."""

from __future__ import annotations

from collections.abc import Mapping
TYPE_CHECKING = False
if TYPE_CHECKING:  # (typing is not imported at run time: it costs start-up)
    from typing import Any

from ._record import record

__all__ = ["CONFINEMENTS", "THREAD_ENV", "ExitStatus", "SandboxConfig", "check_env", "sandbox_options"]

CONFINEMENTS = ("strict", "best-effort", "none")

#: Every sandbox starts with these (before ``env=``): numeric libraries size their thread
#: pools by the machine's CPUs, not by the sandbox, and a pool per sandbox costs memory
#: that ``Limits.memory_mb`` counts. One thread each unless the host says otherwise.
THREAD_ENV: dict[str, str] = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "GOTO_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "BLIS_NUM_THREADS": "1",
    "VECLIB_MAXIMUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1",
    "NUMBA_NUM_THREADS": "1",
    "RAYON_NUM_THREADS": "1",
}

_MAX_ENV_BYTES = 32 * 1024  # the whole config must fit in one spawn packet
# Read once, when a program starts: a sandbox is forked from a running interpreter, so
# setting them would silently do nothing.
_READ_AT_START = (("LD_", "the dynamic loader"), ("GLIBC_TUNABLES", "glibc"), ("MALLOC_", "glibc's malloc"),
                  ("PYTHON", "the interpreter"))


@record
class SandboxConfig:
    """Settings a sandbox process is started with.

    ``memory_mb`` and ``cpu_seconds`` are ``None`` when lifted. ``allow_imports``
    includes the ``preload`` names. ``env`` holds the host's extra environment
    variables, sorted by name (on top of :data:`THREAD_ENV`).
    """

    confinement: str = "strict"
    memory_mb: int | None = 512
    cpu_seconds: float | None = 60
    allow_imports: tuple[str, ...] = ()
    max_message_bytes: int = 64 * 1024 * 1024
    max_decoded_bytes: int = 512 * 1024 * 1024
    debug: bool = False
    preload: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.confinement not in CONFINEMENTS:
            raise ValueError(
                f"confinement must be one of {', '.join(map(repr, CONFINEMENTS))}, "
                f"not {self.confinement!r}"
            )

    def environment(self) -> dict[str, str]:
        """The variables the sandbox process sets before anything else runs in it."""
        return {**THREAD_ENV, **dict(self.env)}


def _is_variable_name(name: str) -> bool:
    """Letters, digits and ``_``, not starting with a digit (ASCII only)."""
    return name.isascii() and name.isidentifier()


def check_env(env: Any) -> tuple[tuple[str, str], ...]:
    """``env`` (a mapping of str to str, or None) as sorted pairs; raises what is wrong."""
    if env is None:
        return ()
    if not isinstance(env, Mapping):
        raise TypeError(f"env must be a mapping of variable names to strings, not {type(env).__name__}")
    size = 0
    for name, value in env.items():
        if not isinstance(name, str) or not _is_variable_name(name):
            raise ValueError(f"env: {name!r} is not a variable name (letters, digits and '_', "
                             "not starting with a digit)")
        if not isinstance(value, str):
            raise TypeError(f"env[{name!r}] must be a str, not {type(value).__name__}: "
                            f"write {name}={str(value)!r}")
        if "\0" in value:
            raise ValueError(f"env[{name!r}] contains a NUL character")
        for prefix, reader in _READ_AT_START:
            if name.startswith(prefix):
                raise ValueError(f"env: {name} is read by {reader} only when a program starts; a sandbox is "
                                 "forked from a running interpreter, so it would have no effect")
        size += len(name.encode()) + len(value.encode("utf-8", "surrogateescape")) + 2
    if size > _MAX_ENV_BYTES:
        raise ValueError(f"env takes at most {_MAX_ENV_BYTES // 1024} KiB of variables, not {size} bytes")
    return tuple(sorted(env.items()))


def sandbox_options(*, allow_imports: Any = (), preload: Any = (), env: Any = None) -> dict[str, Any]:
    """The checked ``allow_imports``, ``preload`` and ``env`` fields of a :class:`SandboxConfig`.

    A bare string, a name that is not an identifier or a module the sandbox cannot
    import is a ``ValueError`` naming it, raised before any process starts.
    ``allow_imports`` comes back with the top-level names of ``preload`` added.
    """
    from ._packages import check_names

    allowed = check_names(allow_imports, "allow_imports")
    preloaded = check_names(preload, "preload")
    tops = tuple(dict.fromkeys((*allowed, *(n.partition(".")[0] for n in preloaded))))
    return {"allow_imports": tops, "preload": preloaded, "env": check_env(env)}


@record(uncompared=("cpu_seconds",))
class ExitStatus:
    """How a sandbox process ended: exactly one of the two is set."""

    exitcode: int | None = None
    signal: int | None = None
    #: CPU time (user + system) the process used over its life, when known.
    cpu_seconds: float | None = None

    @classmethod
    def from_wait_status(cls, status: int, cpu_seconds: float | None = None) -> "ExitStatus":
        import os

        if os.WIFSIGNALED(status):
            return cls(signal=os.WTERMSIG(status), cpu_seconds=cpu_seconds)
        return cls(exitcode=os.waitstatus_to_exitcode(status), cpu_seconds=cpu_seconds)
