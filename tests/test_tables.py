"""Unit tests of the capability tables, and the in-process pair from capbridge.testing."""

from __future__ import annotations

import gc
import threading
import weakref

import pytest

from capbridge import ProtocolError, expose
from capbridge._tables import ExportTable, ImportTable, Tables
from capbridge.testing import pair


class Obj:
    pass


# --------------------------------------------------------------------------- ExportTable


def test_one_id_per_object_and_counted_references():
    t = ExportTable()
    a, b = Obj(), Obj()
    ea = t.export(a, a, None)
    assert t.export(a, a, None) is ea
    eb = t.export(b, b, None)
    assert ea.id != eb.id
    assert ea.count == 2 and eb.count == 1
    assert t.get(ea.id) is ea and t.get(eb.id) is eb
    assert len(t) == 2


def test_equal_objects_are_distinct_exports():
    t = ExportTable()
    x, y = [1], [1]
    assert t.export(x, x, None).id != t.export(y, y, None).id


def test_counted_release():
    t = ExportTable()
    a = Obj()
    e = t.export(a, a, None)
    t.export(a, a, None)
    t.export(a, a, None)
    assert t.release(e.id, 2) is True
    assert t.get(e.id) is e and e.count == 1
    assert t.release(e.id, 1) is True
    assert t.get(e.id) is None and len(t) == 0


def test_over_release_is_rejected_and_changes_nothing():
    t = ExportTable()
    a = Obj()
    e = t.export(a, a, None)
    t.export(a, a, None)
    assert t.release(e.id, 3) is False
    assert t.get(e.id) is e and e.count == 2
    assert t.release(e.id, 2) is True
    assert t.release(e.id, 1) is False  # gone now
    assert t.release(12345, 1) is False  # never existed


def test_release_racing_a_new_reference_keeps_the_object():
    t = ExportTable()
    a = Obj()
    e = t.export(a, a, None)  # sent once
    t.export(a, a, None)  # sent again while the peer's release of the first is in flight
    assert t.release(e.id, 1)
    assert t.get(e.id) is e  # the second reference is still live


def test_ids_are_never_reused():
    t = ExportTable()
    a = Obj()
    seen = set()
    for _ in range(50):
        e = t.export(a, a, None)
        assert e.id not in seen
        seen.add(e.id)
        assert t.release(e.id, 1)
    b = Obj()
    assert t.export(b, b, None).id not in seen


def test_target_iface_and_membrane_are_kept():
    t = ExportTable()
    wrapper, target = Obj(), Obj()
    e = t.export(wrapper, target, "IFACE", "MEMBRANE")
    assert e.obj is wrapper and e.target is target and e.iface == "IFACE" and e.membrane == "MEMBRANE"


def _iface(name="I"):
    from capbridge._expose import Interface

    return Interface(name=name, doc="", methods={}, properties={}, dunders={})


def test_interface_keys_live_while_an_export_uses_them():
    out: list = []
    t = ExportTable(out)
    i, j = _iface("I"), _iface("J")
    a, b, c = Obj(), Obj(), Obj()
    ea, eb, ec = t.export(a, a, i), t.export(b, b, i), t.export(c, c, j)
    assert ea.key == eb.key != ec.key and t.interfaces() == 2
    assert t.describe(i, []) == (ea.key, True)
    pending: list = []
    assert t.describe(i, pending) == (ea.key, True) and t.describe(i, pending) == (ea.key, False)
    t.mark_sent(pending)
    assert t.describe(i, []) == (ea.key, False)  # the peer has it now
    assert t.release(ea.id, 1) and t.release(eb.id, 1)
    assert out == [] and t.interfaces() == 2  # kept while something is exported
    again = t.export(a, a, i)
    assert again.key == ea.key and t.describe(i, []) == (ea.key, False)  # not described again
    assert t.release(ec.id, 1) and t.interfaces() == 1  # j was never sent: gone, silently
    assert t.release(again.id, 1)
    assert out == [(0, ea.key)] and t.interfaces() == 0  # the table is empty: all forgotten
    fresh = t.export(a, a, i)
    assert fresh.key not in (ea.key, ec.key)  # a key is never reused
    assert t.describe(i, []) == (fresh.key, True)


def test_idle_interface_keys_are_bounded():
    from capbridge._tables import MAX_IDLE_KEYS

    out: list = []
    t = ExportTable(out)
    keep = Obj()
    t.export(keep, keep, _iface("Keep"))
    for n in range(MAX_IDLE_KEYS + 10):
        o, iface = Obj(), _iface(f"I{n}")
        e = t.export(o, o, iface)
        t.mark_sent([e.key])
        t.release(e.id, 1)
    assert t.interfaces() == MAX_IDLE_KEYS + 1
    assert len(out) == 10 and out[0] == (0, 2)  # the oldest went first, and the peer was told


def test_export_is_thread_safe():
    t = ExportTable()
    objs = [Obj() for _ in range(20)]

    def work():
        for _ in range(200):
            for o in objs:
                t.export(o, o, None)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(t) == 20
    assert {t.get(e).count for e in list(t._by_id)} == {800}


# --------------------------------------------------------------------------- ImportTable


class FakeProxy:
    pass


def _maker(made):
    def make(entry):
        p = FakeProxy()
        entry.proxy = weakref.ref(p)
        made.append(p)
        return p

    return make


def test_receive_makes_one_proxy_and_counts():
    t = ImportTable()
    made = []
    p1 = t.receive(7, _maker(made))
    p2 = t.receive(7, _maker(made))
    assert p1 is p2 and len(made) == 1
    entry = t._by_id[7]
    assert entry.count == 2 and len(t) == 1


def test_dropped_queues_one_release_for_all_references():
    t = ImportTable()
    made = []
    t.receive(7, _maker(made))
    t.receive(7, _maker(made))
    t.receive(9, _maker(made))
    entry = t._by_id[7]
    t.dropped(entry)
    assert len(t) == 1
    assert t.take_releases() == ((7, 2),)
    assert t.take_releases() == ()
    t.dropped(entry)  # a second call releases nothing more
    assert t.take_releases() == ()


def test_receive_after_the_proxy_died_starts_afresh():
    t = ImportTable()
    made = []
    p = t.receive(3, _maker(made))
    old = t._by_id[3]
    made.clear()
    del p
    gc.collect()
    p2 = t.receive(3, _maker(made))
    new = t._by_id[3]
    assert new is not old and new.count == 1 and len(made) == 1
    # the old entry's late finalizer must not remove the new one
    t.dropped(old)
    assert t._by_id[3] is new
    assert t.take_releases() == ((3, 1),)
    del p2


def test_take_releases_collects_many():
    t = ImportTable()
    made = []
    for n in range(1, 11):
        t.receive(n, _maker(made))
    for n in range(1, 11):
        t.dropped(t._by_id[n])
    assert sorted(t.take_releases()) == [(n, 1) for n in range(1, 11)]


def test_tables_stats_and_qids():
    tables = Tables()
    assert tables.stats() == {"exports": 0, "imports": 0, "questions": 0, "answers": 0,
                              "interfaces": 0, "peer_interfaces": 0}
    ids = [tables.next_qid() for _ in range(5)]
    assert ids == sorted(set(ids)) and ids[0] >= 1


# --------------------------------------------------------------------------- the in-process pair


class HostSide:
    def __init__(self):
        self.calls = 0

    @expose
    def bounce(self, n, peer):
        self.calls += 1
        if n == 0:
            return 0
        return peer.bounce(n - 1, self) + 1

    @expose
    def add(self, a, b):
        return a + b

    def secret(self):
        return "host secret"


class Peer:
    """A sandbox-side object: the host sees it as a proxy."""

    def __init__(self):
        self.calls = 0

    def bounce(self, n, host):
        self.calls += 1
        if n == 0:
            return 0
        return host.bounce(n - 1, self) + 1


class SandboxBoot:
    def __init__(self):
        self.peer = None

    def twice(self, x):
        return 2 * x

    def use(self, host, a, b):
        return host.add(a, b)

    def touch_secret(self, host):
        return host.secret()

    def start(self, n, host):
        self.peer = Peer()
        try:
            return self.peer.bounce(n, host)
        finally:
            self.peer = None

    def make_peer(self):
        return Peer()

    def noop(self):
        return None


def _settle(p):
    """Let both ends send and process queued releases."""
    for _ in range(3):
        gc.collect()
        p.host.flush_releases()
        p.sandbox.flush_releases()
        p.call_bootstrap("noop")


EMPTY = {"exports": 0, "imports": 0, "questions": 0, "answers": 0}


def _tables(session):
    return {k: v for k, v in session.stats().items() if k in EMPTY}


def _empty(session, timeout=2.0):
    """The session's tables once they are empty (the serving thread finishes its
    bookkeeping just after it sends the answer), or as they are at the timeout."""
    import time

    deadline = time.monotonic() + timeout
    while _tables(session) != EMPTY and time.monotonic() < deadline:
        time.sleep(0.005)
    return _tables(session)


@pytest.fixture
def the_pair():
    p = pair(SandboxBoot())
    yield p
    p.close()


def test_calls_host_to_sandbox(the_pair):
    assert the_pair.call_bootstrap("twice", 21) == 42
    assert the_pair.call_bootstrap("twice", x="ab") == "abab"


def test_calls_sandbox_to_host(the_pair):
    host = HostSide()
    assert the_pair.call_bootstrap("use", host, 2, 3) == 5


def test_sandbox_cannot_reach_unexposed_host_members(the_pair):
    from capbridge import RemoteError

    with pytest.raises(RemoteError, match="AttributeError"):
        the_pair.call_bootstrap("touch_secret", HostSide())


def test_host_gets_a_proxy_for_a_sandbox_object(the_pair):
    from capbridge import Proxy

    peer = the_pair.call_bootstrap("make_peer")
    assert isinstance(peer, Proxy)
    assert peer.bounce(0, HostSide()) == 0


def test_nested_calls_50_deep_and_tables_empty_after(the_pair):
    p = the_pair
    host = HostSide()
    assert p.call_bootstrap("start", 50, host) == 50
    assert host.calls == 25  # the host serves the odd levels 49, 47, ..., 1
    del host
    _settle(p)
    assert _tables(p.host_session) == EMPTY
    assert _empty(p.sandbox_session) == EMPTY


def test_tables_empty_after_plain_calls(the_pair):
    p = the_pair
    for n in range(20):
        assert p.call_bootstrap("use", HostSide(), n, 1) == n + 1
    peer = p.call_bootstrap("make_peer")
    assert p.host_session.stats()["imports"] == 1
    del peer
    _settle(p)
    assert _tables(p.host_session) == EMPTY
    assert _empty(p.sandbox_session) == EMPTY


def test_pair_host_end_is_the_checked_decoder(the_pair):
    # The host end refuses a hand-made forbidden body like a real host does.
    import os
    import sys

    sys.path.insert(0, os.path.dirname(__file__))
    import hostile as H

    with pytest.raises(ProtocolError, match="forbidden pickle opcode GLOBAL"):
        the_pair.host_session.decode(H.call_with(H.global_call("os", "system", H.s("true"))))


def test_a_peer_that_forgets_an_interface_must_describe_it_again():
    """(0, key) release pairs from a hostile sandbox only ever shrink the host's state."""
    from capbridge import ProtocolError
    from capbridge._host_session import HostSession
    from capbridge._protocol import check_release

    s = HostSession()
    desc = (*_iface("Thing").describe(), True)
    first = s.import_ref(1, 7, desc)
    assert s.stats()["peer_interfaces"] == 1
    s.handle_release(check_release(((0, 7), (0, 12345))))  # one known key, one never described
    assert s.stats()["peer_interfaces"] == 0
    assert type(first).__name__ == "Thing"  # proxies already made keep their class
    with pytest.raises(ProtocolError, match="undescribed interface 7"):
        s.import_ref(2, 7, None)  # a sandbox that forgot a key must describe it again
    s.import_ref(2, 7, desc)
    assert s.stats()["peer_interfaces"] == 1
    for bad in (((0, 0),), ((-1, 7),)):
        with pytest.raises(ProtocolError):
            check_release(bad)
