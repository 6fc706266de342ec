"""Attacks on ``facet()`` and ``revocable()``: the membrane must hold on every path.

Each attack runs as sandbox code in a real strict sandbox (``tests/conftest.py``) and
reads back plain verdicts: ``("ok", value)`` or ``("err", type name, message)``, as
the sandbox's own call site saw them. Every test has a control - the same path before
``revoke()``, or the same object without the facet - so it can fail.

The leak tests hold the cyclic garbage collector off (``no_gc``): what they prove
freed is freed by reference counting, at once.
"""

from __future__ import annotations

import abc
import enum
import functools
import gc
import os
import threading
import types
import typing
import weakref

import pytest

import capbridge
from capbridge import CapabilityError, RevokedError, expose, facet, revocable
from capbridge._membrane import Bound
from capbridge._tables import MAX_IDLE_KEYS
from conftest import make_sandbox

TRY = '''
import capbridge

def outcome(fn):
    try:
        value = fn()
    except BaseException as exc:
        return ("err", type(exc).__name__, str(exc)[:300])
    if type(value) in (int, str, bool, float, type(None), list, tuple):
        return ("ok", value)
    return ("ok", type(value).__name__)
'''

OK = "ok"


def revoked(verdict) -> bool:
    return verdict[0] == "err" and verdict[1] == "RevokedError"


def run(sb, expr: str):
    """What ``expr`` gave at the sandbox's call site."""
    return sb.eval(f"outcome(lambda: {expr})")


@pytest.fixture
def box(sandbox_factory):
    def make(grants=None, **kwargs):
        sb = sandbox_factory(grants, **kwargs)
        sb.exec(TRY)
        return sb

    return make


@pytest.fixture
def no_gc():
    was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def in_thread(fn):
    """Run ``fn`` on another host thread; its result or exception."""
    out: dict = {}

    def body():
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            out["error"] = exc

    t = threading.Thread(target=body)
    t.start()
    t.join(60)
    assert not t.is_alive()
    return out


# --------------------------------------------------------------------------- host objects


class Child:
    def __init__(self, name="child"):
        self.name = name
        self.uses = 0

    @expose
    def poke(self):
        self.uses += 1
        return self.name


class Parent:
    def __init__(self, child=None):
        self.kid = child if child is not None else Child()

    @expose
    def child(self):
        return self.kid

    @expose
    def echo(self, x):
        return x


class Echo:
    @expose
    def echo(self, x):
        return x


class Box:
    def __init__(self):
        self.items = []

    @expose
    def put(self, x):
        self.items.append(x)

    @expose
    def get(self):
        return self.items[-1]


class User:
    def __init__(self):
        self.ran = 0

    @expose
    def use(self, thing):
        self.ran += 1
        return thing.poke()

    @expose
    def use_all(self, things):
        self.ran += 1
        return [t.poke() for t in things]


class Bus:
    def __init__(self):
        self.subs = []

    @expose
    def subscribe(self, cb):
        self.subs.append(cb)

    def fire(self, value):
        return [cb(value) for cb in self.subs]


class Account:
    def __init__(self):
        self._balance = 100

    @property
    def balance(self):
        return self._balance

    @property
    def myself(self):
        return self

    def withdraw(self, n):
        self._balance -= n
        return self._balance

    def me(self):
        return self

    def wrapped(self):
        return [self, {"me": self}, (self,)]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


# --------------------------------------------------------------------------- round trips


def test_round_trip_through_echo_stays_revoked(box):
    cap, revoke = revocable(Parent())
    sb = box({"node": cap, "echo": Echo(), "box": Box()})
    sb.exec("c = node.child()\nback = echo.echo(c)\nbox.put(c)\nkept = box.get()")
    for name in ("c", "back", "kept"):  # control: every path works before revoke
        assert run(sb, f"{name}.poke()") == (OK, "child")
    assert sb.eval("back is c and kept is c")  # one export, however it travelled
    revoke()
    for expr in ("c.poke()", "back.poke()", "kept.poke()", "echo.echo(c)", "box.get().poke()"):
        assert revoked(run(sb, expr)), expr
    assert run(sb, "echo.echo(1)") == (OK, 1)


def test_round_trip_through_a_host_container_after_revoke(box):
    """The host keeps the reference it was handed and gives it out again later."""
    cap, revoke = revocable(Parent())
    store = Box()
    sb = box({"node": cap, "box": store})
    sb.exec("box.put(node.child())")
    assert run(sb, "box.get().poke()") == (OK, "child")
    assert isinstance(store.items[0], Bound)  # the host holds the wrapper, not the child
    revoke()
    assert revoked(run(sb, "box.get().poke()"))
    with pytest.raises(RevokedError):
        store.items[0].poke()


def test_two_paths_to_one_child_are_two_exports(box):
    shared = Child()
    c1, r1 = revocable(Parent(shared))
    c2, r2 = revocable(Parent(shared))
    sb = box({"p1": c1, "p2": c2})
    sb.exec("a = p1.child()\nb = p2.child()")
    assert sb.eval("a is not b")
    assert run(sb, "a.poke()") == run(sb, "b.poke()") == (OK, "child")
    r1()
    assert revoked(run(sb, "a.poke()"))
    assert run(sb, "b.poke()") == (OK, "child")  # the other path still works
    r2()
    assert revoked(run(sb, "b.poke()"))
    assert revoked(run(sb, "p2.child().poke()"))
    assert shared.uses == 3


def test_revoking_both_paths_kills_both(box):
    shared = Child()
    c1, r1 = revocable(Parent(shared))
    c2, r2 = revocable(Parent(shared))
    sb = box({"p1": c1, "p2": c2})
    sb.exec("a = p1.child()\nb = p2.child()")
    r2()
    r1()
    assert revoked(run(sb, "a.poke()")) and revoked(run(sb, "b.poke()"))
    assert shared.uses == 0


def test_a_child_carried_through_a_second_membrane_obeys_both(box):
    """a = p1.child(); p2.echo(a): what comes back is inside both membranes."""
    for first in ("r1", "r2"):
        c1, r1 = revocable(Parent())
        c2, r2 = revocable(Parent())
        sb = box({"p1": c1, "p2": c2})
        sb.exec("a = p1.child()\nab = p2.echo(a)")
        assert run(sb, "ab.poke()") == (OK, "child")
        {"r1": r1, "r2": r2}[first]()
        assert revoked(run(sb, "ab.poke()")), first
        sb.close()


# --------------------------------------------------------------------------- confused deputy


def test_confused_deputy_revoked_argument_fails_at_the_call_site(box):
    cap, revoke = revocable(Parent())
    u = User()
    sb = box({"node": cap, "u": u})
    sb.exec("c = node.child()")
    assert run(sb, "u.use(c)") == (OK, "child")  # control: the deputy acts on it
    assert u.ran == 1
    revoke()
    for expr in ("u.use(c)", "u.use_all([1, c])", "u.use_all(({'k': [c]},))",
                 "u.use(thing=c)"):
        assert revoked(run(sb, expr)), expr
    assert u.ran == 1  # the host method never ran
    assert run(sb, "u.use_all([])") == (OK, [])


# --------------------------------------------------------------------------- callbacks


def test_callback_subscribed_through_a_revocable_stops_on_revoke(box):
    bus = Bus()
    cap, revoke = revocable(bus)
    sb = box({"bus": cap})
    sb.exec("got = []\ndef cb(x):\n    got.append(x)\n    return x * 2\nbus.subscribe(cb)")
    assert isinstance(bus.subs[0], capbridge.Proxy)  # a sandbox object, as the host sees it
    assert in_thread(lambda: bus.fire(1)) == {"value": [2]}  # control, from another thread
    assert sb.eval("got") == [1]
    revoke()
    out = in_thread(lambda: bus.fire(2))
    assert isinstance(out.get("error"), RevokedError), out
    assert sb.eval("got") == [1]  # the sandbox callback never ran


def test_sandbox_objects_returned_by_a_callback_stay_inside(box):
    """What a callback hands back to the host is inside the membrane as well."""
    bus = Bus()
    cap, revoke = revocable(bus)
    sb = box({"bus": cap})
    sb.exec("class Thing:\n    def hi(self):\n        return 'hi'\n"
            "def cb(x):\n    return Thing()\nbus.subscribe(cb)")
    (thing,) = bus.fire(0)
    assert thing.hi() == "hi"
    revoke()
    with pytest.raises(RevokedError):
        thing.hi()


# --------------------------------------------------------------------------- facets


def test_facet_self_return_is_the_facet(box):
    acct = Account()
    cap = facet(acct, "balance", "myself", "me", "wrapped", "__enter__", "__exit__")
    full = facet(acct, "balance", "withdraw", "__enter__", "__exit__")
    sb = box({"acct": cap, "full": full})
    assert run(sb, "full.__enter__().withdraw(1)") == (OK, 99)  # control
    for expr in ("acct.withdraw(10**6)", "acct.__enter__().withdraw(10**6)",
                 "acct.me().withdraw(10**6)", "acct.myself.withdraw(10**6)",
                 "acct.wrapped()[0].withdraw(10**6)", "acct.wrapped()[1]['me'].withdraw(10**6)",
                 "acct.wrapped()[2][0].withdraw(10**6)"):
        verdict = run(sb, expr)
        assert verdict[0] == "err" and verdict[1] == "AttributeError", (expr, verdict)
    sb.exec("with acct as a:\n    same = a is acct")
    assert sb.eval("same and acct.me() is acct and acct.myself is acct")
    assert acct.balance == 99 and run(sb, "acct.balance") == (OK, 99)


def test_facet_of_a_revocable(box):
    acct = Account()
    rcap, revoke = revocable(facet(acct, "balance", "withdraw", "me", "__enter__", "__exit__"))
    narrow = facet(rcap, "balance", "me", "__enter__", "__exit__")
    with pytest.raises(CapabilityError, match="cannot widen"):
        facet(narrow, "withdraw")
    sb = box({"acct": narrow, "wide": rcap})
    assert run(sb, "acct.me() is acct") == (OK, True)
    verdict = run(sb, "acct.__enter__().withdraw(5)")
    assert verdict[1] == "AttributeError", verdict
    assert run(sb, "wide.me().withdraw(5)") == (OK, 95)  # control: the wider one can
    revoke()
    for expr in ("acct.balance", "acct.me()", "wide.balance"):
        assert revoked(run(sb, expr)), expr
    assert acct.balance == 95


def test_revocable_of_a_facet(box):
    acct = Account()
    cap, revoke = revocable(facet(acct, "balance", "me", "__enter__", "__exit__"))
    sb = box({"acct": cap})
    assert run(sb, "acct.me() is acct") == (OK, True)
    assert run(sb, "acct.withdraw(1)")[1] == "AttributeError"
    assert run(sb, "acct.me().withdraw(1)")[1] == "AttributeError"
    sb.exec("with acct as inside:\n    pass")
    revoke()
    for expr in ("acct.balance", "inside.balance", "acct.me()"):
        assert revoked(run(sb, expr)), expr
    assert acct.balance == 100


# --------------------------------------------------------------------------- threads


def test_revoke_from_another_thread_while_calls_are_in_flight(box):
    class Counter:
        def __init__(self):
            self.calls = 0
            self.in_call = threading.Event()
            self.may_finish = threading.Event()

        @expose
        def tick(self):
            self.calls += 1
            if self.calls == 5:  # one call is in flight while revoke() runs
                self.in_call.set()
                self.may_finish.wait(30)
            return Child(str(self.calls))

    counter = Counter()
    cap, revoke = revocable(counter)
    sb = box({"counter": cap})
    after: dict = {}

    def revoker():
        assert counter.in_call.wait(30)
        revoke()
        after["calls"] = counter.calls
        counter.may_finish.set()

    t = threading.Thread(target=revoker)
    t.start()
    sb.exec("results = []\nfor i in range(40):\n"
            "    results.append(outcome(lambda: counter.tick().poke()))")
    t.join(30)
    results = sb.eval("results")
    assert results[:4] == [(OK, str(i)) for i in range(1, 5)]
    assert revoked(results[4])  # in flight: it finished, but what it returned is revoked
    assert all(revoked(r) for r in results[5:])
    assert counter.calls == after["calls"] == 5  # nothing started after revoke() returned
    assert sb.alive and sb.eval("1 + 1") == 2


def test_many_threads_calling_while_revoked(box):
    cap, revoke = revocable(Parent())
    sb = box({"node": cap})
    sb.exec("c = node.child()")
    bad: list = []
    stop = threading.Event()

    def caller():
        while not stop.is_set():
            try:
                sb.eval("c.poke()")
            except Exception as exc:  # noqa: BLE001
                if "RevokedError" not in str(exc):
                    bad.append(exc)
                    return

    threads = [threading.Thread(target=caller) for _ in range(3)]
    for t in threads:
        t.start()
    revoke()
    after = [run(sb, "c.poke()") for _ in range(5)]
    stop.set()
    for t in threads:
        t.join(30)
    assert not bad
    assert all(revoked(v) for v in after)
    assert sb.alive


# --------------------------------------------------------------------------- iterators, with


class Resource:
    def __init__(self):
        self.entered = 0
        self.exited = 0

    @expose
    def __enter__(self):
        self.entered += 1
        return self

    @expose
    def __exit__(self, *exc):
        self.exited += 1

    @expose
    def read(self):
        return "data"


class Store:
    def __init__(self, n=600):
        self.n = n
        self.pulled = 0
        self.res = Resource()

    @expose
    def __iter__(self):
        for i in range(self.n):
            self.pulled += 1
            yield Child(str(i))

    @expose
    def open(self):
        return self.res


def test_iterator_obtained_before_revoke(box):
    store = Store()
    cap, revoke = revocable(store)
    sb = box({"store": cap})
    sb.exec("it = iter(store)\nfirst = next(it)")
    assert run(sb, "first.poke()") == (OK, "0")
    pulled = store.pulled
    revoke()
    sb.exec("items = []\nstopped = None\n"
            "try:\n    for x in it:\n        items.append(x)\n"
            "except capbridge.RevokedError as exc:\n    stopped = 'revoked'\n")
    assert sb.eval("stopped") == "revoked"  # fetching the next batch is refused
    assert store.pulled == pulled  # the host iterator was not advanced
    assert sb.eval("len(items)") > 0  # what had already crossed is there, but dead
    assert revoked(run(sb, "items[0].poke()"))


def test_context_manager_obtained_before_revoke(box):
    store = Store()
    cap, revoke = revocable(store)
    sb = box({"store": cap})
    sb.exec("cm = store.open()\nopened = store.open()\nr = opened.__enter__()")
    assert run(sb, "r.read()") == (OK, "data")
    assert store.res.entered == 1
    revoke()
    verdict = sb.eval("outcome(lambda: cm.__enter__())")
    assert revoked(verdict)
    sb.exec("try:\n    with cm:\n        ran = True\nexcept capbridge.RevokedError:\n    ran = False")
    assert sb.eval("ran") is False
    assert revoked(run(sb, "opened.__exit__(None, None, None)"))
    assert revoked(run(sb, "r.read()"))
    assert store.res.entered == 1 and store.res.exited == 0  # nothing reached the host


# --------------------------------------------------------------------------- other sandboxes


def test_revoked_capability_handed_to_another_sandbox(box):
    parent = Parent()
    cap, revoke = revocable(parent)
    store = Box()
    sb1 = box({"node": cap, "box": store})
    sb1.exec("box.put(node.child())")
    sb2 = box({"node": cap, "kid": store.items[0]})
    assert run(sb2, "kid.poke()") == (OK, "child")  # control: before revoke it works there
    revoke()
    sb3 = box({"node": cap, "kid": store.items[0]})
    for sb in (sb2, sb3):
        assert revoked(run(sb, "kid.poke()"))
        assert revoked(run(sb, "node.child()"))
    assert parent.kid.uses == 1


def test_a_proxy_from_one_sandbox_cannot_be_passed_to_another(box):
    store = Box()
    sb1 = box({"box": store})
    sb2 = box({"box": store})
    sb1.exec("class T:\n    def hi(self):\n        return 1\nbox.put(T())")
    verdict = run(sb2, "box.get()")
    assert verdict[0] == "err" and "another sandbox" in verdict[2]


class Ledger:
    def __init__(self, acct):
        self.acct = acct

    @expose
    def account(self):
        return self.acct


class Vault:
    """Everything is exposed: only a facet keeps ``withdraw`` away."""

    def __init__(self):
        self.balance = 100

    @expose
    def withdraw(self, n):
        self.balance -= n
        return self.balance

    @expose
    def ledger(self):
        return Ledger(self)


def test_facet_holds_after_the_sandbox_drops_the_facet_itself(box):
    """A child reached through a facet returns the target after the facet's own
    proxy (and the host's last reference to the facet) are gone."""
    vault = Vault()
    sb = box({"vault": facet(vault, "ledger")})
    assert run(sb, "vault.withdraw(1)")[1] == "AttributeError"
    sb.exec("led = vault.ledger()\ndel vault\ncapbridge.grants.clear()\nimport gc\ngc.collect()")
    sb.eval("1")  # the release rides along
    assert sb.stats()["tables"]["exports"] == 1  # only the ledger is left
    verdict = run(sb, "led.account().withdraw(10)")
    assert verdict[1] == "AttributeError", verdict
    assert vault.balance == 100
    full = box({"vault": vault})  # control: without the facet the same path withdraws
    assert run(full, "vault.ledger().account().withdraw(10)") == (OK, 90)


# --------------------------------------------------------------------------- shipping

SECRET_DSN = f"postgres://app:s3cret-{os.getpid()}@db.internal/main"


class AbcConn(abc.ABC):
    def __init__(self):
        self.dsn = SECRET_DSN


class _Connectable(typing.Protocol):
    def connect(self) -> None: ...


class ProtoConn(_Connectable):
    def __init__(self):
        self.dsn = SECRET_DSN


class _Meta(type):
    pass


class MetaConn(metaclass=_Meta):
    def __init__(self):
        self.dsn = SECRET_DSN


class AbcMetaConn(metaclass=abc.ABCMeta):
    def __init__(self):
        self.dsn = SECRET_DSN


class PlainConn:
    def __init__(self):
        self.dsn = SECRET_DSN


class Env(enum.Enum):
    PROD = PlainConn()


class Mode(enum.Enum):
    FAST = 1
    SLOW = 2


ABC_CONN = AbcConn()
PROTO_CONN = ProtoConn()
META_CONN = MetaConn()
ABCMETA_CONN = AbcMetaConn()
PLAIN_CONN = PlainConn()
CONNS_LIST = [1, "two", AbcConn()]
CONNS_DICT = {"main": {"nested": (MetaConn(),)}}
NAMESPACE = types.SimpleNamespace(conn=ProtoConn())
PARTIAL = functools.partial(print, AbcConn())


class Holder:
    conn = MetaConn()


def uses_abc():
    return ABC_CONN.dsn


def uses_proto():
    return PROTO_CONN.dsn


def uses_meta():
    return META_CONN.dsn


def uses_abcmeta():
    return ABCMETA_CONN.dsn


def uses_plain():
    return PLAIN_CONN.dsn


def uses_enum():
    return Env.PROD.value.dsn


def uses_list():
    return CONNS_LIST[2].dsn


def uses_dict():
    return CONNS_DICT["main"]["nested"][0].dsn


def uses_namespace():
    return NAMESPACE.conn.dsn


def uses_partial():
    return PARTIAL


def uses_class_attribute():
    return Holder.conn.dsn


def _closure():
    conn = AbcConn()

    def uses_closure():
        return conn.dsn

    return uses_closure


def uses_default(conn=MetaConn()):
    return conn.dsn


def uses_kwdefault(*, conn=ProtoConn()):
    return conn.dsn


def _helper():
    return ABC_CONN.dsn


def uses_helper():
    return _helper()


SHIPPING_LEAKS = [
    (uses_abc, "global 'ABC_CONN'", "AbcConn"),
    (uses_proto, "global 'PROTO_CONN'", "ProtoConn"),
    (uses_meta, "global 'META_CONN'", "MetaConn"),
    (uses_abcmeta, "global 'ABCMETA_CONN'", "AbcMetaConn"),
    (uses_plain, "global 'PLAIN_CONN'", "PlainConn"),
    (uses_enum, "global 'Env'", "PlainConn"),
    (uses_list, "global 'CONNS_LIST'", "AbcConn"),
    (uses_dict, "global 'CONNS_DICT'", "MetaConn"),
    (uses_namespace, "global 'NAMESPACE'", "ProtoConn"),
    (uses_partial, "global 'PARTIAL'", "AbcConn"),
    (uses_class_attribute, "global 'Holder'", "MetaConn"),
    (_closure(), "closure variable 'conn'", "AbcConn"),
    (uses_default, "default of 'conn'", "MetaConn"),
    (uses_kwdefault, "default of 'conn'", "ProtoConn"),
    (uses_helper, "global 'ABC_CONN'", "AbcConn"),
]


@pytest.mark.parametrize("fn, where, type_name", SHIPPING_LEAKS, ids=[f[0].__name__ for f in SHIPPING_LEAKS])
def test_shipping_refuses_host_objects_in_globals(sb, fn, where, type_name):
    before = sb.stats()
    with pytest.raises(CapabilityError) as info:
        sb.call(fn)
    message = str(info.value)
    assert where in message and type_name in message, message
    assert SECRET_DSN not in message
    after = sb.stats()
    assert after["bytes_to_sandbox"] == before["bytes_to_sandbox"]  # nothing was sent
    assert after["calls_to_sandbox"] == before["calls_to_sandbox"]
    assert after["tables"] == before["tables"]
    assert sb.eval("6 * 7") == 42


def test_shipping_refuses_host_objects_in_arguments(sb):
    with pytest.raises(CapabilityError, match="argument 1.*AbcConn"):
        sb.call(len, AbcConn())


MODES = {"fast": Mode.FAST}
LIMITS = [1, 2.5, "three", (4,), {"five": b"5"}]


def uses_values():
    import re

    return [MODES["fast"].value, Mode.SLOW.name, LIMITS, re.IGNORECASE.value, functools.reduce(int.__add__, [1, 2])]


def test_shipping_control_values_and_definitions_travel(sb):
    assert sb.call(uses_values) == [1, "SLOW", LIMITS, 2, 3]
    assert sb.call(lambda c: c.poke(), Child("x")) == "x"  # capabilities go by reference


# --------------------------------------------------------------------------- values that cannot cross


def test_values_from_the_sandbox_that_cannot_cross_fail_the_call(box):
    class Sink:
        @expose
        def take(self, x):
            return "took"

    sb = box({"sink": Sink()})
    sb.exec("cyc = []\ncyc.append(cyc)\ndeep = []\nd = deep\n"
            "for _ in range(1000):\n    d.append([])\n    d = d[0]\n")
    for expr in ("cyc", "deep", "[sink, deep]", "{'k': cyc}"):
        with pytest.raises(CapabilityError):
            sb.eval(expr)
        assert sb.alive
    assert run(sb, "sink.take(deep)")[1] == "CapabilityError"  # and from sandbox calls
    assert run(sb, "sink.take(cyc)")[1] == "CapabilityError"
    assert sb.eval("len(cyc)") == 1 and sb.alive


def _deep(n):
    root = d = []
    for _ in range(n):
        d.append([])
        d = d[0]
    return root


def test_values_from_the_host_nested_too_deep_fail_the_call(box):
    deep = _deep(100_000)

    class Source:
        @expose
        def deep(self):
            return deep

        @expose
        def deep_with_cap(self):
            return [Child(), deep]

    cap, _ = revocable(Source())
    sb = box({"src": Source(), "rsrc": cap})
    for expr in ("src.deep()", "src.deep_with_cap()", "rsrc.deep()", "rsrc.deep_with_cap()"):
        verdict = run(sb, expr)
        assert verdict[:2] == ("err", "CapabilityError"), (expr, verdict)
    for call in (lambda: sb.grant("deep", deep), lambda: sb.call(len, deep),
                 lambda: sb.call(lambda: len(deep))):
        with pytest.raises(CapabilityError):
            call()
    assert sb.alive and sb.stats()["tables"]["exports"] == 2


def test_export_made_while_encoding_a_reply_that_is_too_big_is_rolled_back(box, no_gc):
    made: list = []

    class Source:
        @expose
        def big(self):
            kid = Child()
            made.append(weakref.ref(kid))
            return [kid, b"x" * (2 * 1024 * 1024)]

        @expose
        def unshareable(self):
            kid = Child()
            made.append(weakref.ref(kid))
            return [kid, object()]

    from capbridge import Limits

    cap, _ = revocable(Source())
    sb = box({"src": Source(), "rsrc": cap}, limits=Limits(max_message_mb=1))
    sb.eval("1")
    before = sb.stats()["tables"]
    for expr in ("src.big()", "rsrc.big()", "src.unshareable()", "rsrc.unshareable()"):
        assert run(sb, expr)[:2] == ("err", "CapabilityError"), expr
        assert sb.stats()["tables"] == before, expr
    assert len(made) == 4 and all(w() is None for w in made)  # nothing kept the children


# --------------------------------------------------------------------------- what stays alive

DROP_ALL = ("for _name in [n for n in globals() if not n.startswith('_') and n not in ('capbridge', 'outcome')]:\n"
            "    del globals()[_name]\n"
            "capbridge.grants.clear()\nimport gc\ngc.collect()\n")

EMPTY = {"exports": 0, "imports": 0, "questions": 0, "answers": 0, "interfaces": 0, "peer_interfaces": 0}


def settle(sb) -> dict:
    """Tables once the releases (and forgotten interface keys) of both sides crossed."""
    for _ in range(3):
        sb.eval("1")
    return sb.stats()["tables"]


def test_revoke_releases_targets_and_the_tables_empty(box, no_gc):
    parent, bus, store = Parent(), Bus(), Store()
    alive = {name: weakref.ref(obj) for name, obj in
             (("parent", parent), ("kid", parent.kid), ("bus", bus), ("store", store))}
    caps = [revocable(parent), revocable(bus), revocable(store)]
    grants = dict(zip(("node", "bus", "store"), (c for c, _ in caps)))
    del parent, store
    sb = box()
    assert settle(sb) == EMPTY
    sb.grant("node", grants["node"])
    sb.grant("bus", grants["bus"])
    sb.grant("store", grants["store"])
    sb.exec("c = node.child()\nback = node.echo(c)\nit = iter(store)\nfirst = next(it)\n"
            "class Listener:\n    def __call__(self, x):\n        return x\nbus.subscribe(Listener())")
    assert bus.fire(3) == [3]
    busy = sb.stats()["tables"]
    assert busy["exports"] >= 5 and busy["interfaces"] >= 4 and busy["imports"] == 1
    assert busy["peer_interfaces"] == 1
    for _, revoke in caps:
        revoke()
    del bus  # the host's own reference; the subscription list went with it
    for name in ("parent", "kid", "store"):  # what only the membranes held is gone at once
        assert alive[name]() is None, name
    sb.exec(DROP_ALL)
    assert settle(sb) == EMPTY
    assert alive["bus"]() is None
    assert all(r() is None for r in alive.values())


def test_a_granted_object_is_collectable_once_the_sandbox_is_closed(sandbox_factory, no_gc):
    parent = Parent()
    alive = weakref.ref(parent), weakref.ref(parent.kid)
    sb = sandbox_factory({"node": parent, "rnode": revocable(Parent(parent.kid))[0]})
    sb.exec("c = node.child()\nd = rnode.child()\nf = lambda: 1\nnode.echo(f)")
    del parent
    assert alive[0]() is not None
    sb.close()
    assert alive[0]() is None and alive[1]() is None
    assert sb.stats()["tables"] == EMPTY


def _pipe_ends(proc) -> dict:
    ends = {}
    for name in ("rfd", "wfd", "out_fd", "err_fd"):
        fd = getattr(proc, name)
        if fd >= 0:
            ends[fd] = os.readlink(f"/proc/self/fd/{fd}")
    return ends


def _still_open(ends: dict) -> list:
    out = []
    for fd, target in ends.items():
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == target:
                out.append(fd)
        except OSError:
            pass
    return out


def test_a_crashed_sandbox_keeps_nothing_alive(no_gc):
    """No close(): the sandbox dies, the user drops it. Its grant goes at once, and
    its pipes are closed as soon as the user lets go - without the cyclic GC."""
    parent = Parent()
    alive = weakref.ref(parent)
    sb = make_sandbox({"node": parent})
    ends = _pipe_ends(sb._proc)
    assert len(ends) == 4
    del parent
    with pytest.raises(Exception) as info:
        sb.exec("import os\nos._exit(3)")
    assert type(info.value).__name__ == "SandboxCrashed"
    del info
    assert alive() is None  # the dead sandbox's exports are gone, though sb is alive
    assert sb.stats()["tables"] == EMPTY
    gone = weakref.ref(sb)
    del sb
    assert gone() is None
    assert _still_open(ends) == []


def test_the_watchdog_does_not_keep_a_closed_sandbox_alive():
    import sys
    import time

    from capbridge import Limits, _watchdog
    from capbridge._channel import Channel

    sb = make_sandbox(limits=Limits(wall_seconds=60))
    sb.eval("1")
    _watchdog.poke()  # the watchdog looks at every watched channel, this one included,
    for _ in range(1000):  # then goes back to sleep (it sets next_wake before waiting)
        if _watchdog.next_wake != 0.0:
            break
        time.sleep(0.01)
    with _watchdog._cond:  # held by the watchdog until it waits
        pass
    chan = weakref.ref(sb._chan)
    sb.close()
    del sb
    frame = sys._current_frames()[_watchdog._thread.ident]
    while frame is not None and frame.f_code is not _watchdog._run.__code__:
        frame = frame.f_back
    assert frame is not None
    held = [name for name, value in frame.f_locals.items() if isinstance(value, Channel)]
    del frame
    assert held == []  # its loop variables do not pin the last channel it looked at
    gc.collect()  # cycles may go; what a live frame holds may not
    assert chan() is None


def test_interfaces_that_come_and_go_do_not_pile_up(box):
    """Fresh facets, bound methods and sandbox functions, one after another: each
    interface is forgotten by both ends when its last export goes."""

    class Host:
        @expose
        def facet(self):
            return facet(Account(), "balance")

        @expose
        def method(self):
            return self.facet

    sb = box({"h": Host()})
    sb.exec("for i in range(4200):\n    x = h.facet()\n    x.balance\n    y = h.method()\n    del x, y")
    for _ in range(4200):
        assert callable(sb.eval("lambda: 1"))
    tables = settle(sb)
    bound = MAX_IDLE_KEYS + 2  # the grant's, the one last used, and the idle ones kept
    assert tables["interfaces"] <= bound and tables["peer_interfaces"] <= bound, tables
    assert sb.alive
    sb.exec(DROP_ALL)
    assert settle(sb) == EMPTY


def test_the_capabilities_page_example_runs_as_written(tmp_path):
    """docs/capabilities.rst, the block after ``.. _membrane-example:``."""
    import pathlib
    import subprocess
    import sys
    import textwrap

    root = pathlib.Path(__file__).resolve().parent.parent
    text = (root / "docs" / "capabilities.rst").read_text()
    block = text.split(".. _membrane-example:", 1)[1].split(".. code-block:: python", 1)[1]
    lines = []
    for line in block.splitlines()[1:]:
        if line.strip() and not line.startswith("   "):
            break
        lines.append(line)
    script = tmp_path / "example.py"
    script.write_text(textwrap.dedent("\n".join(lines)))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(root)})
    assert proc.returncode == 0, proc.stderr
