"""Descriptions of public parameters, for the API reference (see capbridge_api).

``PARAMETERS`` is keyed by the documented object's full name (``capbridge.Sandbox``,
``host_apis.VirtualFS.open``), then by parameter name; a key ending in ``.*`` serves
every method of that class. A description here is used only where the object's
docstring does not describe the parameter itself (a ``:param name:`` field).

``NO_CONSTRUCTOR`` names classes users receive but never construct: the reference
shows them without a signature.
"""

_TIMEOUT = ("a deadline in seconds for this call, replacing ``Limits.wall_seconds``; "
            "``None`` keeps the limit")

PARAMETERS: dict[str, dict[str, str]] = {
    # ------------------------------------------------------------------ capbridge
    "capbridge.Sandbox": {
        "grants": "names and objects the sandbox may reach; each name becomes a global of "
                  "the code run inside (and a key of ``capbridge.grants``). A grant is a "
                  "capability (an object with exposed members, a function, a "
                  ":func:`facet` or :func:`revocable`) or plain data, which arrives as a copy.",
        "limits": "the :class:`Limits` of this sandbox (default: ``Limits()``).",
        "confinement": "``\"strict\"`` refuses to start without rlimits, Landlock and "
                       "seccomp (:class:`ConfinementUnavailable`); ``\"best-effort\"`` uses "
                       "what the kernel offers and warns about the rest; ``\"none\"`` is no "
                       "confinement at all, for development.",
        "allow_imports": "import names of installed packages (``(\"numpy\",)``) whose files "
                         "the sandbox may read and import; the standard library is always "
                         "readable, and so are each package's dependencies and the shared "
                         "libraries its extensions load. A bare string or an unknown name is a "
                         "``ValueError``.",
        "preload": "modules imported once in a clean template process before any untrusted "
                   "code exists; sandboxes of the same configuration start with them imported.",
        "env": "extra environment variables for the sandboxed process (it starts from an "
               "empty environment; thread pools such as OpenBLAS default to one thread).",
        "stdout": "where the sandbox's standard output goes: a callable called with ``str`` "
                  "chunks, or a text file. Default: the host's ``sys.stdout``, each line "
                  "prefixed ``[sandbox PID]``.",
        "stderr": "the same for standard error (default prefix ``[sandbox PID stderr]``).",
        "debug": "when true, exceptions from host capabilities carry the host traceback into "
                 "the sandbox, and tracebacks keep capbridge's own frames. Leave it off in "
                 "production: tracebacks show host paths and code.",
        "audit": "a callable given one :class:`AuditEvent` per call the sandbox makes "
                 "through a capability.",
    },
    "capbridge.Sandbox.exec": {
        "source": "Python statements, run in the sandbox's ``__main__`` (its globals persist "
                  "between calls; the grants are among them).",
        "filename": "the name tracebacks give this code.",
        "timeout": _TIMEOUT,
    },
    "capbridge.Sandbox.eval": {
        "expression": "one Python expression, evaluated in the sandbox's ``__main__``.",
        "timeout": _TIMEOUT,
    },
    "capbridge.Sandbox.execute": {
        "source": "statements run like lines at the interactive prompt: the value of a final "
                  "expression is kept.",
        "timeout": _TIMEOUT,
    },
    "capbridge.Sandbox.call": {
        "fn": "a host function, shipped by value (cloudpickle) with its closure and the "
              "globals it uses; modules travel by name.",
        "args": "positional arguments for ``fn``, sent by the rules of every call.",
        "kwargs": "keyword arguments for ``fn``.",
    },
    "capbridge.Sandbox.load": {
        "source": "the module's source code.",
        "name": "the module's dotted name: later sandbox code can ``import`` it.",
        "timeout": _TIMEOUT,
    },
    "capbridge.Sandbox.grant": {
        "name": "an identifier: the global name of the grant inside.",
        "obj": "the object to grant, by the rules of ``grants``.",
    },
    "capbridge.Limits": {
        "memory_mb": "address space of the whole sandbox process, in MiB.",
        "cpu_seconds": "CPU seconds over the sandbox's life.",
        "wall_seconds": "wall-clock seconds of each outermost call from the host into the "
                        "sandbox (time spent in host capabilities counts).",
        "max_message_mb": "the largest frame either side may send, in MiB.",
        "max_output_kb": "KiB of stdout plus stderr passed on to the host per call; the rest "
                         "is dropped after a note.",
        "call_cpu_seconds": "CPU seconds one call may use.",
        "max_decoded_mb": "MiB of host memory one message from the sandbox may decode into. "
                          "A message is also held to 14 times its own size (or 8 MiB, when "
                          "that is more); past either, the sandbox is killed with "
                          ":class:`ProtocolError` (an honest sandbox gets a "
                          ":class:`CapabilityError` at its call site first).",
    },
    "capbridge.AsyncSandbox": {
        "grants": "as for :class:`Sandbox`.",
        "kwargs": "the keyword arguments of :class:`Sandbox`.",
    },
    "capbridge.AsyncSandbox.call": {
        "fn": "as for :meth:`Sandbox.call`.",
        "args": "positional arguments for ``fn``.",
        "kwargs": "keyword arguments for ``fn``.",
        "timeout": _TIMEOUT,
    },
    "capbridge.AsyncSandbox.run": {
        "fn": "a blocking callable, such as a proxy's method.",
        "args": "positional arguments for ``fn``.",
        "kwargs": "keyword arguments for ``fn``.",
    },
    "capbridge.SandboxPool": {
        "size": "how many started, locked-down sandboxes to keep ready.",
        "setup": "host code run in each sandbox before it is handed out.",
        "sandbox_kwargs": "the keyword arguments of :class:`Sandbox`, the same for every "
                          "sandbox of the pool (grants included).",
    },
    "capbridge.expose": {
        "member": "a method, property, static or class method, or a supported special method.",
    },
    "capbridge.capability": {
        "cls": "the class whose public methods and properties become reachable.",
    },
    "capbridge.facet": {
        "obj": "any object, exposed or not.",
        "names": "the attribute names the facet offers; nothing else of ``obj`` is reachable "
                 "through it.",
    },
    "capbridge.revocable": {
        "obj": "a capability (an object with exposed members, a function, or a facet).",
    },
    "capbridge.value_type": {
        "cls": "a dataclass or NamedTuple (omitted when used as ``@value_type(name=...)``).",
        "name": "the name both sides match the type by (default: the class's qualified name).",
    },
    "capbridge.RemoteError": {
        "type_name": "the name of the exception's type, e.g. ``\"ZeroDivisionError\"``.",
        "message": "``str()`` of the exception.",
        "remote_traceback": "the traceback where it was raised, as text.",
    },
    "capbridge.SandboxCrashed": {
        "message": "what happened, for people.",
        "exitcode": "the process's exit status, if it exited.",
        "signal": "the number of the signal that killed it, if one did.",
    },
    # ------------------------------------------------------------------ host_apis
    "host_apis.VirtualFS": {
        "mounts": "virtual absolute paths mapped to a host directory: a path (read-only) or "
                  "a :class:`Mount` with its own permissions and quotas.",
    },
    "host_apis.VirtualFS.*": {
        "path": "an absolute virtual path, or one relative to ``/``.",
        "mode": "for ``open``: a binary mode such as ``\"rb\"``, ``\"wb\"``, ``\"ab\"``, "
                "``\"xb\"`` or ``\"r+b\"``; for ``mkdir``: permission bits.",
        "src": "the virtual path to rename.",
        "dst": "its new virtual path, in the same writable mount.",
    },
    "host_apis.Mount": {
        "host_path": "an existing host directory, resolved once when the :class:`VirtualFS` "
                     "is built.",
        "writable": "allow creating, writing, removing and renaming beneath it.",
        "max_bytes": "bytes that may be written through this mount (``None``: unlimited; "
                     "nothing is credited back).",
        "max_files": "files and directories that may be created through it.",
        "allow_hard_links": "allow reading regular files that have more than one hard link.",
    },
    "host_apis.MemoryFS": {
        "files": "initial content: virtual paths mapped to ``bytes`` or ``str`` (stored as "
                 "UTF-8); parent directories are created.",
        "max_bytes": "the total size the files may have at any time (``None``: unlimited).",
        "max_files": "how many files and directories the tree may hold at any time.",
        "read_only": "refuse every change made from the sandbox.",
    },
    "host_apis.MemoryFS.write_bytes": {
        "path": "the file's virtual path.",
        "data": "its new content.",
        "parents": "create missing parent directories.",
    },
    "host_apis.MemoryFS.*": {
        "path": "an absolute virtual path, or one relative to ``/``.",
        "mode": "for ``open``: a binary mode such as ``\"rb\"``, ``\"wb\"``, ``\"ab\"``, "
                "``\"xb\"`` or ``\"r+b\"``; for ``mkdir``: permission bits.",
        "src": "the virtual path to rename.",
        "dst": "its new virtual path.",
    },
    "host_apis.FileBase.*": {
        "n": "the most bytes to return (``-1`` or ``None``: to the end).",
        "limit": "the most bytes to return (``-1`` or ``None``: no limit).",
        "hint": "stop once this many bytes were read (``-1`` or ``None``: read all).",
        "data": "the bytes to write.",
        "offset": "the new position, relative to ``whence``.",
        "whence": "0: from the start, 1: from the current position, 2: from the end.",
        "size": "the new length (default: the current position).",
    },
    "host_apis.KeyValueStore": {
        "path": "the SQLite file; several processes may share it.",
        "namespace": "the tenant: keys of one namespace are invisible to another.",
        "max_keys": "the most keys this namespace may hold (``None``: unlimited).",
        "max_bytes": "the most UTF-8 key bytes plus encoded value bytes it may hold.",
    },
    "host_apis.KeyValueStore.*": {
        "key": "a string key.",
        "value": "a value made of plain data (numbers, strings, bytes, lists, dicts, ...).",
        "default": "returned when ``key`` is absent.",
        "prefix": "only keys starting with this.",
        "limit": "the most results (``None``: all).",
        "mapping": "keys and values to store.",
        "ops": "``('set', key, value)`` and ``('delete', key)`` tuples.",
    },
    "host_apis.KVBatch.*": {
        "key": "a string key.",
        "value": "a value made of plain data.",
    },
    "host_apis.Clock": {
        "max_sleep": "the longest one :meth:`sleep` may be; longer requests raise "
                     "``ValueError`` (``None``: no bound).",
        "max_total_sleep": "all sleeps together; past it ``sleep`` raises ``PermissionError``.",
        "resolution": "round the times handed out down to a multiple of this many seconds.",
    },
    "host_apis.Clock.sleep": {
        "seconds": "how long to sleep; it blocks the host thread serving the call.",
    },
    "host_apis.Random": {
        "seed": "makes the sequence repeatable; ``None`` draws from the operating system.",
    },
    "host_apis.Random.*": {
        "a": "the lower end.",
        "b": "the upper end (included).",
        "start": "the first value of the range (its only bound when ``stop`` is ``None``).",
        "stop": "the end of the range (excluded).",
        "step": "the distance between values of the range.",
        "seq": "a sequence (it arrives by value).",
        "population": "the sequence to draw from.",
        "k": "how many elements (``sample``) or bits (``getrandbits``).",
        "n": "how many bytes (at most 1 MiB).",
    },
    "host_apis.Logger": {
        "name": "the host :mod:`logging` logger that records the messages.",
        "max_message_bytes": "messages longer than this (UTF-8) are cut, with a note.",
        "rate": "messages per second that pass (``None``: all).",
        "burst": "how many may pass at once (default: ``rate``).",
        "min_level": "records below this level are dropped before they cost anything.",
    },
    "host_apis.Logger.*": {
        "level": "a level number or name such as ``\"INFO\"``.",
        "msg": "the message; values other than text are ``repr``-ed.",
    },
}

NO_CONSTRUCTOR = frozenset({
    "capbridge.Proxy",
    "capbridge.Execution",
    "capbridge.AuditEvent",
    "host_apis.FileBase",
    "host_apis.HostFile",
    "host_apis.MemoryFile",
    "host_apis.KVBatch",
})
