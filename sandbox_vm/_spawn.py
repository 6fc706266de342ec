"""Starting a sandbox process and holding its host-side ends."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import threading

from ._config import ExitStatus, SandboxConfig

__all__ = ["SandboxProcess", "spawn"]


class SandboxProcess:
    """The host's handle on one sandbox process.

    ``rfd`` reads the sandbox's frames, ``wfd`` writes frames to it, ``out_fd`` and
    ``err_fd`` read its stdout and stderr.
    """

    def __init__(self, popen: subprocess.Popen, rfd: int, wfd: int, out_fd: int, err_fd: int) -> None:
        self._popen = popen
        self.pid = popen.pid
        self.rfd, self.wfd, self.out_fd, self.err_fd = rfd, wfd, out_fd, err_fd
        self._lock = threading.Lock()

    def poll(self) -> ExitStatus | None:
        rc = self._popen.poll()
        return None if rc is None else _status(rc)

    def wait(self, timeout: float | None = None) -> ExitStatus | None:
        try:
            return _status(self._popen.wait(timeout))
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        if self._popen.returncode is None:
            try:
                self._popen.send_signal(signal.SIGKILL)
            except ProcessLookupError:
                pass

    def close_fds(self) -> None:
        with self._lock:
            for name in ("rfd", "wfd", "out_fd", "err_fd"):
                fd = getattr(self, name)
                if fd >= 0:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
                    setattr(self, name, -1)


def _status(rc: int) -> ExitStatus:
    return ExitStatus(signal=-rc) if rc < 0 else ExitStatus(exitcode=rc)


def spawn(config: SandboxConfig) -> SandboxProcess:
    """Start one sandbox process for ``config``; it locks itself down before serving."""
    to_child_r, to_child_w = os.pipe()
    to_host_r, to_host_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    for fd in (to_child_w, to_host_r, out_r, err_r):
        os.set_inheritable(fd, False)
    try:
        popen = subprocess.Popen(
            [sys.executable, "-I", "-m", "sandbox_vm._child", str(to_child_r), str(to_host_w),
             pickle.dumps(config).hex()],
            stdin=subprocess.DEVNULL,
            stdout=out_w,
            stderr=err_w,
            pass_fds=(to_child_r, to_host_w),
            env={"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
            close_fds=True,
            start_new_session=True,
        )
    finally:
        for fd in (to_child_r, to_host_w, out_w, err_w):
            os.close(fd)
    return SandboxProcess(popen, to_host_r, to_child_w, out_r, err_r)
