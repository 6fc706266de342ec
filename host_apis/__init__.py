"""Ready-made capabilities a host can grant to a sandbox.

* :class:`VirtualFS` / :class:`Mount` - host directories at virtual paths, confined
  beneath each mount; :class:`MemoryFS` - the same interface in memory.
* :class:`KeyValueStore` - a namespaced, quota-bound key-value store in SQLite.
* :class:`Clock`, :class:`Random`, :class:`Logger` - time with bounded sleeps,
  seedable randomness, and rate-limited logging into the host's :mod:`logging`.

Inside the sandbox, ``sandbox_vm._fsshim.install(fs)`` routes ``open()``, ``os`` and
``pathlib`` file calls to a granted file-system capability.
"""

from ._clock import Clock
from ._common import MAX_READ, StatTuple
from ._filebase import FileBase
from ._kv import KeyValueStore, KVBatch
from ._logger import Logger
from ._memfs import MemoryFile, MemoryFS
from ._random import Random
from ._vfs import HostFile, Mount, VirtualFS

__all__ = [
    "VirtualFS",
    "Mount",
    "MemoryFS",
    "FileBase",
    "HostFile",
    "MemoryFile",
    "StatTuple",
    "MAX_READ",
    "KeyValueStore",
    "KVBatch",
    "Clock",
    "Random",
    "Logger",
]
