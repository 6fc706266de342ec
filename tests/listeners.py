"""Listening sockets on this host for network escape attempts to aim at."""

from __future__ import annotations

import os
import pathlib
import socket

import pytest


class Listeners:
    """TCP, UDP, pathname and abstract Unix listeners, non-blocking.

    ``args`` holds what attack code needs to aim at them (``port``, ``udp_port``,
    ``unix_path``, ``abstract``).
    """

    def __init__(self, tmp: pathlib.Path, tag: str) -> None:
        self.tcp = socket.create_server(("127.0.0.1", 0))
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        unix_path = str(tmp / "listener.sock")
        self.unix = socket.socket(socket.AF_UNIX)
        self.unix.bind(unix_path)
        self.unix.listen()
        abstract = f"capbridge-{tag}-{os.getpid()}"
        self.abstract = socket.socket(socket.AF_UNIX)
        self.abstract.bind("\0" + abstract)
        self.abstract.listen()
        for s in self.all():
            s.setblocking(False)
        self.streams = (self.tcp, self.unix, self.abstract)
        self.args = {"port": self.tcp.getsockname()[1], "udp_port": self.udp.getsockname()[1],
                     "unix_path": unix_path, "abstract": abstract}

    def all(self) -> tuple[socket.socket, ...]:
        return (self.tcp, self.udp, self.unix, self.abstract)

    def close(self) -> None:
        for s in self.all():
            s.close()


def nothing_arrived(streams, udp) -> None:
    """Assert no connection and no datagram reached the listeners."""
    for listener in streams:
        with pytest.raises(BlockingIOError):
            listener.accept()
    with pytest.raises(BlockingIOError):
        udp.recv(100)
