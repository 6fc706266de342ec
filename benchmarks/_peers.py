"""The far side of each benchmark contender (run as a child process, or imported).

``python _peers.py pickle RFD WFD``  - the hand-written length-prefixed pickle loop
``python _peers.py rpyc SOCKFD``     - an RPyC service over one end of a socketpair
``python _peers.py pyro5``           - a Pyro5 daemon on 127.0.0.1 (prints its URI)

Every far side offers the same four things:

* ``f(x)``         returns ``x`` (host-to-peer call),
* ``cb()``         calls the host's ``add(1, 2)`` and returns it (callback round trip),
* ``loop(n)``      calls the host's ``add(1, 2)`` ``n`` times, timing each call with
                   ``time.perf_counter`` here, and returns the times as packed doubles,
* ``sink(b)`` / ``source(n)``  take or return ``n`` bytes (bulk transfer).

The loops are written the same way in every contender, and the same way as the one
capbridge runs inside the sandbox (see ``SANDBOX_MODULE`` in ``run.py``).
"""

from __future__ import annotations

import array
import os
import pickle
import struct
import sys
import time

_HDR = struct.Struct(">I")
_blobs: dict[int, bytes] = {}


def blob(n: int) -> bytes:
    b = _blobs.get(n)
    if b is None:
        b = _blobs[n] = os.urandom(n)
    return b


def timed_loop(add, n: int) -> bytes:
    """``n`` timed calls of ``add(1, 2)``; the per-call seconds as packed doubles."""
    pc = time.perf_counter
    ts = array.array("d", bytes(8 * n))
    for i in range(n):
        t0 = pc()
        add(1, 2)
        ts[i] = pc() - t0
    return ts.tobytes()


# ---------------------------------------------------------------- hand-written pickle loop

def read_exact(fd: int, n: int):
    """``n`` bytes from ``fd``: one read when they are there, else into one buffer."""
    data = os.read(fd, n)
    if len(data) == n:
        return data
    if not data:
        raise EOFError
    buf = bytearray(n)
    view = memoryview(buf)
    got = len(data)
    view[:got] = data
    while got < n:
        k = os.readv(fd, [view[got:]])
        if not k:
            raise EOFError
        got += k
    return buf


def send_msg(fd: int, obj) -> None:
    body = pickle.dumps(obj, 5)
    data = _HDR.pack(len(body)) + body
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def recv_msg(fd: int):
    (size,) = _HDR.unpack(read_exact(fd, 4))
    return pickle.loads(read_exact(fd, size))


def pickle_peer(rfd: int, wfd: int) -> None:
    """Serve ("f", x) / ("cb",) / ("loop", n) / ("sink", b) / ("source", n) until EOF."""

    def host_add(a, b):
        send_msg(wfd, ("add", (a, b)))
        while True:
            msg = recv_msg(rfd)
            if msg[0] == "r":
                return msg[1]
            raise RuntimeError(f"unexpected {msg[0]!r}")

    while True:
        try:
            msg = recv_msg(rfd)
        except EOFError:
            return
        op = msg[0]
        if op == "f":
            send_msg(wfd, ("r", msg[1]))
        elif op == "cb":
            send_msg(wfd, ("r", host_add(1, 2)))
        elif op == "loop":
            send_msg(wfd, ("r", timed_loop(host_add, msg[1])))
        elif op == "sink":
            send_msg(wfd, ("r", len(msg[1])))
        elif op == "source":
            send_msg(wfd, ("r", blob(msg[1])))
        else:
            raise RuntimeError(f"unknown op {op!r}")


# ---------------------------------------------------------------- RPyC

def rpyc_peer(sockfd: int) -> None:
    import socket

    import rpyc
    from rpyc.core.stream import SocketStream

    class PeerService(rpyc.Service):
        def on_connect(self, conn):
            self._conn = conn
            self._add = None

        def _host_add(self):
            if self._add is None:
                self._add = self._conn.root.add
            return self._add

        def exposed_f(self, x):
            return x

        def exposed_cb(self):
            return self._host_add()(1, 2)

        def exposed_loop(self, n):
            return timed_loop(self._host_add(), n)

        def exposed_sink(self, b):
            return len(b)

        def exposed_source(self, n):
            return blob(n)

    sock = socket.socket(fileno=sockfd)
    conn = rpyc.connect_stream(SocketStream(sock), service=PeerService,
                               config={"sync_request_timeout": 120})
    try:
        conn.serve_all()
    except (EOFError, OSError):
        pass


# ---------------------------------------------------------------- Pyro5

def pyro5_configure() -> None:
    import Pyro5

    Pyro5.config.SERIALIZER = "marshal"   # the fastest built-in; bytes cross natively
    Pyro5.config.SOCK_NODELAY = True
    Pyro5.config.COMMTIMEOUT = 0.0


def pyro5_peer() -> None:
    import Pyro5.api

    pyro5_configure()

    @Pyro5.api.expose
    class Peer:
        def __init__(self):
            self._host = None

        def _host_add(self, uri):
            if self._host is None:
                self._host = Pyro5.api.Proxy(uri)
            self._host._pyroClaimOwnership()
            return self._host.add

        def f(self, x):
            return x

        def cb(self, host_uri):
            return self._host_add(host_uri)(1, 2)

        def loop(self, n, host_uri):
            return timed_loop(self._host_add(host_uri), n)

        def sink(self, b):
            return len(b)

        def source(self, n):
            return blob(n)

        def shutdown(self):
            daemon.shutdown()

    daemon = Pyro5.api.Daemon(host="127.0.0.1")
    uri = daemon.register(Peer(), "peer")
    sys.stdout.write(f"{uri}\n")
    sys.stdout.flush()
    daemon.requestLoop()
    daemon.close()


# ---------------------------------------------------------------- multiprocessing.managers

class HostCalc:
    """The host's object (sandbox-to-host and callbacks)."""

    def add(self, a, b):
        return a + b


class ManagerPeer:
    """The far side's object, served by a BaseManager server process."""

    def __init__(self):
        self._host = None
        self._mgr = None

    def _host_add(self, address, authkey):
        if self._host is None:
            from multiprocessing.managers import BaseManager

            class HostManager(BaseManager):
                pass

            HostManager.register("HostCalc")
            self._mgr = HostManager(address=address, authkey=authkey)
            self._mgr.connect()
            self._host = self._mgr.HostCalc()
        return self._host.add

    def f(self, x):
        return x

    def cb(self, address, authkey):
        return self._host_add(address, authkey)(1, 2)

    def loop(self, n, address, authkey):
        return timed_loop(self._host_add(address, authkey), n)

    def sink(self, b):
        return len(b)

    def source(self, n):
        return blob(n)


if __name__ == "__main__":
    kind = sys.argv[1]
    if kind == "pickle":
        pickle_peer(int(sys.argv[2]), int(sys.argv[3]))
    elif kind == "rpyc":
        rpyc_peer(int(sys.argv[2]))
    elif kind == "pyro5":
        pyro5_peer()
    else:
        raise SystemExit(f"unknown peer {kind!r}")
