"""Behaviour of the front door (``Sandbox``) against a real sandbox process."""

import dataclasses
import datetime as dt
import decimal
import fractions
import gc
import threading
import time
import uuid
from typing import NamedTuple

import pytest

import capbridge
from capbridge import (
    CapabilityError,
    Limits,
    ProtocolError,
    RemoteError,
    SandboxError,
    capability,
    expose,
    facet,
    revocable,
    value_type,
)


class Inventory:
    """Counts things."""

    def __init__(self):
        self._items = {}

    @expose
    def add(self, name: str, qty: int) -> None:
        """Add ``qty`` of ``name``."""
        self._items[name] = self._items.get(name, 0) + qty

    @expose
    def count(self, name: str) -> int:
        return self._items.get(name, 0)

    def reset(self):
        self._items.clear()


def test_spec_example(sandbox_factory):
    sb = sandbox_factory({"inventory": Inventory()},
                         limits=Limits(memory_mb=256, cpu_seconds=5, wall_seconds=10))
    sb.exec("inventory.add('apple', 3)")
    assert sb.eval("inventory.count('apple')") == 3
    plugin = sb.load("def double(x):\n    return 2 * x\n", name="plugin")
    assert plugin.double(21) == 42
    assert sb.call(pow, 2, 10) == 1024


def test_not_exposed_is_unreachable(sandbox_factory):
    inv = Inventory()
    inv.add("pear", 1)
    sb = sandbox_factory({"inventory": inv})
    with pytest.raises(RemoteError) as info:
        sb.exec("inventory.reset()")
    assert info.value.type_name == "AttributeError"
    assert "no exposed attribute 'reset'" in info.value.message
    assert "exposed: add, count" in info.value.message
    assert inv.count("pear") == 1
    assert sb.eval("hasattr(inventory, 'reset')") is False
    assert sb.eval("hasattr(inventory, '_items')") is False
    assert sb.eval("sorted(n for n in dir(inventory) if not n.startswith('__'))") == ["add", "count"]


def test_help_shows_host_docstrings(sb):
    sb.grant("inventory", Inventory())
    text = sb.eval("__import__('pydoc').render_doc(inventory, renderer=__import__('pydoc').plaintext)")
    assert "Counts things." in text
    assert "Add ``qty`` of ``name``." in text
    assert "add(self, name: 'str', qty: 'int') -> 'None'" in text or "add(self, name: str, qty: int)" in text


def test_eval_values_round_trip(sb):
    cases = [None, True, 1, 2**100, 1.5, 2 + 3j, "ünï", b"\x00\xff", bytearray(b"ab"),
             [1, [2, (3, {4})]], {"a": {1: frozenset({2})}}, dt.date(2024, 1, 2),
             dt.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=dt.timezone.utc),
             dt.datetime(2024, 1, 2, 3, 4, tzinfo=dt.timezone(dt.timedelta(hours=-3))),
             dt.time(1, 2, 3), dt.timedelta(days=1, seconds=2), decimal.Decimal("1.10"),
             fractions.Fraction(3, 7), uuid.UUID(int=12345)]
    for value in cases:
        sb.grant("v", value)
        got = sb.eval("v")
        assert got == value and type(got) is type(value), value


def test_exec_errors_come_back_as_remote_error(sb):
    with pytest.raises(RemoteError) as info:
        sb.exec("def f():\n    raise ValueError('boom')\nf()", filename="plugin.py")
    err = info.value
    assert err.type_name == "ValueError"
    assert err.message == "boom"
    assert "plugin.py" in err.remote_traceback and "line 2" in err.remote_traceback
    assert isinstance(err, SandboxError)
    # the sandbox survives ordinary errors
    assert sb.eval("1 + 1") == 2


def test_host_exceptions_arrive_as_same_builtin_type(sandbox_factory):
    class Api:
        @expose
        def fail(self, kind):
            if kind == "key":
                raise KeyError("missing")
            if kind == "file":
                raise FileNotFoundError(2, "No such file or directory", "/x")
            class Custom(Exception):
                pass
            raise Custom("secret detail")

    sb = sandbox_factory({"api": Api()})
    sb.exec(
        "def catch(kind):\n"
        "    try:\n"
        "        api.fail(kind)\n"
        "    except Exception as e:\n"
        "        return (type(e).__name__, e.args, getattr(e, 'filename', None), e.__traceback__ is not None)\n"
    )
    assert sb.eval("catch('key')")[:2] == ("KeyError", ("missing",))
    assert sb.eval("catch('file')")[:3] == ("FileNotFoundError", (2, "No such file or directory"), "/x")
    name, args, _, _ = sb.eval("catch('custom')")
    assert name == "RemoteError"
    # no host traceback without debug=True
    sb.exec("try:\n    api.fail('key')\nexcept KeyError as e:\n    cause = e.__cause__\n")
    assert sb.eval("cause") is None


def test_unshareable_return_is_capability_error_in_sandbox(sandbox_factory):
    class Api:
        @expose
        def leak(self):
            return threading.Lock()

    sb = sandbox_factory({"api": Api()})
    sb.exec("import capbridge\ntry:\n    api.leak()\nexcept capbridge.CapabilityError as e:\n    err = str(e)\n")
    assert "lock" in sb.eval("err").lower()


def test_grant_unshareable_raises_on_host(sb):
    with pytest.raises(CapabilityError, match="lock"):
        sb.grant("x", threading.Lock())
    assert sb.eval("1") == 1


def test_capability_decorator_and_properties(sandbox_factory):
    @capability
    class Account:
        def __init__(self):
            self._balance = 10

        def deposit(self, n):
            self._balance += n

        @property
        def balance(self):
            return self._balance

        def _private(self):
            return "no"

    class Thermostat:
        def __init__(self):
            self._t = 20

        @expose
        @property
        def target(self):
            return self._t

        @target.setter
        def target(self, value):
            self._t = value

    t = Thermostat()
    sb = sandbox_factory({"acct": Account(), "thermo": t})
    sb.exec("acct.deposit(5)")
    assert sb.eval("acct.balance") == 15
    assert sb.eval("hasattr(acct, '_private')") is False
    sb.exec("thermo.target = 25")
    assert t._t == 25
    with pytest.raises(RemoteError, match="no setter|cannot"):
        sb.exec("acct.balance = 0")


def test_dunders(sandbox_factory):
    class Bag:
        def __init__(self, items):
            self.items = list(items)
            self.entered = 0
            self.exit_info = None

        @expose
        def __len__(self):
            return len(self.items)

        @expose
        def __getitem__(self, i):
            return self.items[i]

        @expose
        def __setitem__(self, i, v):
            self.items[i] = v

        @expose
        def __contains__(self, x):
            return x in self.items

        @expose
        def __iter__(self):
            return iter(self.items)

        @expose
        def __enter__(self):
            self.entered += 1
            return self

        @expose
        def __exit__(self, et, ev, tb):
            self.exit_info = (et, str(ev) if ev else None)
            return False

        @expose
        def __call__(self, x):
            return x * 2

        @expose
        def __add__(self, other):
            return len(self.items) + other

        @expose
        def __eq__(self, other):
            return other == "bag"

    bag = Bag(range(1000))
    sb = sandbox_factory({"bag": bag})
    assert sb.eval("len(bag)") == 1000
    assert sb.eval("bag[5]") == 5
    sb.exec("bag[0] = -1")
    assert bag.items[0] == -1
    assert sb.eval("999 in bag") is True
    before = sb.stats()["calls_to_host"]
    assert sb.eval("sum(x for x in bag)") == sum(bag.items)
    trips = sb.stats()["calls_to_host"] - before
    assert trips <= 1 + 1000 // 256 + 1, trips  # batched iteration
    sb.exec("with bag as b:\n    pass")
    assert bag.entered == 1 and bag.exit_info == (None, None)
    sb.exec("try:\n    with bag:\n        raise ValueError('x')\nexcept ValueError:\n    pass")
    # A built-in exception raised in the sandbox's with-block reaches __exit__ as itself.
    assert bag.exit_info[0] is ValueError and "x" in bag.exit_info[1]
    assert sb.eval("bag(21)") == 42
    assert sb.eval("bag + 1") == 1001
    assert sb.eval("bag == 'bag'") is True


def test_callables_granted(sb):
    calls = []

    def record(x):
        """Record x."""
        calls.append(x)
        return len(calls)

    sb.grant("record", record)
    sb.grant("upper", str.upper)
    assert sb.eval("record('a')") == 1
    assert calls == ["a"]
    assert sb.eval("record.__doc__") == "Record x."


def test_sandbox_objects_reach_host_as_proxies(sandbox_factory):
    seen = []

    class Registry:
        @expose
        def register(self, callback):
            seen.append(callback)
            return callback(10)

    sb = sandbox_factory({"registry": Registry()})
    assert sb.eval("registry.register(lambda x: x + 1)") == 11
    cb = seen[0]
    assert cb(1) == 2  # the host can call it later
    obj = sb.eval("type('Plugin', (), {'name': 'p', 'hello': lambda self, who: 'hi ' + who})()")
    assert obj.hello("host") == "hi host"
    assert obj.name == "p"


def test_nested_calls_both_ways(sandbox_factory):
    class Api:
        @expose
        def down(self, fn, n):
            return fn(n - 1) if n > 0 else 0

    sb = sandbox_factory({"api": Api()})
    sb.exec("def f(n):\n    return 1 + api.down(f, n)\n")
    assert sb.eval("f(40)") == 41
    f = sb.eval("f")
    api = Api()
    assert api.down(f, 30) == 30


def test_host_threads_share_one_sandbox(sandbox_factory):
    class Api:
        @expose
        def echo(self, x):
            time.sleep(0.001)
            return x

    sb = sandbox_factory({"api": Api()})
    sb.exec("def work(i):\n    return sum(api.echo(j) for j in range(i, i + 5))\n")
    work = sb.eval("work")
    results = {}
    errors = []

    def run(i):
        try:
            results[i] = [work(i) for _ in range(10)]
        except Exception as exc:  # pragma: no cover - failure path
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert results == {i: [sum(range(i, i + 5))] * 10 for i in range(6)}


def test_dropped_proxies_release_both_sides(sandbox_factory):
    class Node:
        @expose
        def child(self):
            return Node()

    sb = sandbox_factory({"root": Node()})
    sb.exec("kids = [root.child() for _ in range(50)]")
    assert sb.stats()["tables"]["exports"] == 51
    sb.exec("del kids\nimport gc; gc.collect()")
    sb.eval("1")  # releases ride along with the next message
    assert sb.stats()["tables"]["exports"] == 1
    objs = [sb.eval("object()") for _ in range(20)]
    del objs
    gc.collect()
    sb.eval("1")
    assert sb.eval("len(__import__('gc').get_objects()) > 0")
    stats = sb.stats()["tables"]
    assert stats["imports"] == 0 and stats["questions"] == 0 and stats["answers"] == 0


def test_facet_attenuates(sandbox_factory):
    class Db:
        def __init__(self):
            self.name = "main"

        def read(self):
            return "data"

        def drop(self):
            raise AssertionError("must not be reachable")

    sb = sandbox_factory({"db": facet(Db(), "read", "name")})
    assert sb.eval("db.read()") == "data"
    assert sb.eval("db.name") == "main"
    with pytest.raises(RemoteError, match="no exposed attribute 'drop'"):
        sb.exec("db.drop()")


def test_revocable_is_transitive(sandbox_factory):
    class Node:
        def __init__(self, depth=0):
            self.depth = depth

        @expose
        def child(self):
            return Node(self.depth + 1)

        @expose
        def where(self):
            return self.depth

    cap, revoke = revocable(Node())
    other = Node(100)
    sb = sandbox_factory({"node": cap, "other": other})
    sb.exec("c = node.child()\ngc = c.child()")
    assert sb.eval("gc.where()") == 2
    revoke()
    for expr in ("node.where()", "c.where()", "gc.child()"):
        sb.exec(f"import capbridge\ntry:\n    {expr}\n    r = 'reached'\nexcept capbridge.RevokedError:\n    r = 'revoked'\n")
        assert sb.eval("r") == "revoked", expr
    assert sb.eval("other.where()") == 100


def test_value_types_cross_by_fields(sandbox_factory):
    @value_type
    @dataclasses.dataclass
    class Point:
        x: int
        y: int

    @value_type
    class Pair(NamedTuple):
        a: str
        b: int

    class Geo:
        @expose
        def shift(self, p):
            assert type(p) is Point
            return Point(p.x + 1, p.y + 1)

        @expose
        def pair(self):
            return Pair("a", 1)

    sb = sandbox_factory({"geo": Geo()})
    sb.grant("start", Point(1, 2))
    assert sb.eval("type(start).__name__") == "Point"
    got = sb.eval("geo.shift(start)")
    assert got == Point(2, 3) and type(got) is Point
    assert sb.eval("tuple(geo.pair())") == ("a", 1)


def test_call_ships_function_by_value(sandbox_factory):
    factor = 3

    def scale(values):
        return [v * factor for v in values]

    sb = sandbox_factory()
    assert sb.call(scale, [1, 2]) == [3, 6]
    lock = threading.Lock()

    def leaky():
        return lock

    with pytest.raises(CapabilityError, match="lock"):
        sb.call(leaky)
    assert sb.call(lambda: __import__("os").getpid()) != __import__("os").getpid()


def test_load_module_importable_and_sees_grants(sandbox_factory):
    sb = sandbox_factory({"inventory": Inventory()})
    sb.load("def stock(n):\n    inventory.add('x', n)\n    return inventory.count('x')\n", name="shop")
    sb.exec("import shop\nv = shop.stock(2)")
    assert sb.eval("v") == 2


def test_output_routing():
    out, err = [], []
    with pytest.warns(RuntimeWarning, match="WITHOUT any OS confinement"):  # said loudly
        sb = capbridge.Sandbox(stdout=out.append, stderr=err.append, confinement="none")
    try:
        sb.exec("print('hello')\nimport sys\nprint('oops', file=sys.stderr)")
        assert "".join(out) == "hello\n"
        assert "".join(err) == "oops\n"
    finally:
        sb.close()


def test_output_cap():
    out = []
    with pytest.warns(RuntimeWarning, match="development only"):
        sb = capbridge.Sandbox(stdout=out.append, limits=Limits(max_output_kb=1), confinement="none")
    try:
        sb.exec("for i in range(1000):\n    print('x' * 50)")
        text = "".join(out)
        assert text.count("x") <= 1024
        assert "output cut off" in text
    finally:
        sb.close()


def test_close_is_idempotent_and_use_after_raises(sb):
    sb.close()
    sb.close()
    with pytest.raises(SandboxError):
        sb.eval("1")


def test_kill(sb):
    sb.kill()
    with pytest.raises(SandboxError):
        sb.exec("pass")


def test_wall_timeout_kills(sandbox_factory):
    sb = sandbox_factory(limits=Limits(wall_seconds=0.5))
    t = time.monotonic()
    with pytest.raises(capbridge.SandboxTimeout):
        sb.exec("while True:\n    pass")
    assert time.monotonic() - t < 5
    with pytest.raises(SandboxError):
        sb.eval("1")


def test_crash_reports_exit_code(sb):
    with pytest.raises(capbridge.SandboxCrashed) as info:
        sb.exec("import os\nos._exit(7)")
    assert info.value.exitcode == 7


def test_memory_error_is_limit_exceeded(sandbox_factory):
    sb = sandbox_factory(limits=Limits(memory_mb=200), confinement="strict")  # rlimits are a layer
    with pytest.raises(capbridge.MemoryLimitExceeded):
        sb.exec("x = bytearray(400 * 1024 * 1024)")
    with pytest.raises(SandboxError):
        sb.eval("1")


def test_stats_counts(sandbox_factory):
    sb = sandbox_factory({"inventory": Inventory()})
    sb.exec("for i in range(10):\n    inventory.add('a', 1)")
    s = sb.stats()
    assert s["calls_to_host"] == 10
    assert s["calls_to_sandbox"] >= 1
    assert s["bytes_to_host"] > 0 and s["bytes_to_sandbox"] > 0
    assert s["peak_memory_mb"] > 1
    assert set(s) >= {"calls_to_host", "calls_to_sandbox", "bytes_to_host", "bytes_to_sandbox",
                      "cpu_seconds", "peak_memory_mb"}


def test_capbridge_importable_inside(sb):
    assert sb.eval("__import__('capbridge').CapabilityError.__name__") == "CapabilityError"
    sb.grant("thing", Inventory())
    assert sb.eval("sorted(__import__('capbridge').grants)") == ["thing"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="confinement"):
        capbridge.Sandbox(confinement="loose")
    with pytest.raises(ValueError):
        Limits(memory_mb=-1)
    with pytest.raises(ValueError, match="grant names"):
        capbridge.Sandbox({"not valid": 1}, confinement="none")


def test_facet_of_a_capability_only_narrows_and_keeps_revocation(sandbox_factory):
    class Db:
        def read(self):
            return "data"

        def write(self, v):
            raise AssertionError("must not be reachable")

    inner = facet(Db(), "read")
    with pytest.raises(CapabilityError, match="cannot widen"):
        facet(inner, "write")
    cap, revoke = revocable(inner)
    narrowed = facet(cap, "read")
    sb = sandbox_factory({"db": narrowed})
    assert sb.eval("db.read()") == "data"
    revoke()
    with pytest.raises(RemoteError, match="RevokedError"):
        sb.eval("db.read()")


def test_audit_hook_sees_every_capability_call(sandbox_factory):
    events = []
    sb = sandbox_factory({"inventory": Inventory()}, audit=events.append)
    sb.exec("inventory.add('a', 1)\ninventory.count('a')")
    try:
        sb.exec("inventory.add('a', 'x')")
    except RemoteError:
        pass
    assert [(e.capability, e.member, e.outcome) for e in events] == [
        ("Inventory", "add", "ok"), ("Inventory", "count", "ok"), ("Inventory", "add", "TypeError")]
    assert all(e.arg_bytes > 0 and e.duration >= 0 for e in events)
    assert isinstance(events[0], capbridge.AuditEvent)


def test_help_builtin_inside(sandbox_factory):
    out = []
    sb = sandbox_factory({"inventory": Inventory()}, stdout=out.append)
    sb.exec("help(inventory)")
    text = "".join(out)
    assert "Counts things." in text and "add(self, name" in text


def test_repeated_strings_in_scalar_calls(sandbox_factory):
    class Api:
        @expose
        def echo(self, *args):
            return list(args)

    sb = sandbox_factory({"api": Api()})
    # The same str object twice (and equal to the method name) must not become a
    # pickle memo reference, which the host's decoder refuses.
    assert sb.eval("api.echo('x', 'x')") == ["x", "x"]
    assert sb.eval("api.echo('echo')") == ["echo"]
    assert sb.eval("(lambda s: api.echo(s, s, b'y', b'y'))('zz')") == ["zz", "zz", b"y", b"y"]


def test_debug_ships_host_tracebacks(sandbox_factory):
    class Api:
        @expose
        def fail(self):
            raise ValueError("inner detail")

    quiet = sandbox_factory({"api": Api()})
    loud = sandbox_factory({"api": Api()}, debug=True)
    code = "try:\n    api.fail()\nexcept ValueError as e:\n    tb = str(e.__cause__ or '')\n"
    quiet.exec(code)
    loud.exec(code)
    assert quiet.eval("tb") == ""
    text = loud.eval("tb")
    assert "Traceback" in text and "inner detail" in text and "def fail" not in text
    assert "test_sandbox.py" in text


def test_static_and_class_methods_can_be_exposed(sandbox_factory):
    class Units:
        factor = 3

        @expose
        @staticmethod
        def double(x):
            return 2 * x

        @expose
        @classmethod
        def scale(cls, x):
            return cls.factor * x

    sb = sandbox_factory({"units": Units()})
    assert sb.eval("units.double(4), units.scale(4)") == (8, 12)


def test_repr_of_a_dead_sandbox_object_does_not_raise(sandbox_factory):
    sb = sandbox_factory()
    obj = sb.eval("type('Thing', (), {'__repr__': lambda self: 'thing!'})()")
    assert repr(obj) == "thing!"
    sb.kill()
    assert "proxy" in repr(obj)


@value_type
@dataclasses.dataclass
class Temperature:
    celsius: float


def test_call_ships_classes_and_value_types(sandbox_factory):
    @dataclasses.dataclass
    class Local:
        y: int

    sb = sandbox_factory()
    assert sb.call(lambda: Local(4).y) == 4  # a plain dataclass travels by value
    got = sb.call(lambda: Temperature(21.5))  # a value type is built inside, crosses back
    assert got == Temperature(21.5) and type(got) is Temperature


def test_host_traceback_shows_sandbox_frames(sb):
    import traceback

    with pytest.raises(RemoteError) as info:
        sb.exec("def inner():\n    raise KeyError('k')\ndef outer():\n    inner()\nouter()", filename="plugin.py")
    frames = [(f.filename, f.lineno, f.name) for f in traceback.extract_tb(info.value.__traceback__)]
    # Sandbox file names are marked, so no host tool opens a host file by that name.
    name = "<sandbox:plugin.py>"
    assert frames[-3:] == [(name, 5, "<module>"), (name, 4, "outer"), (name, 2, "inner")]
    assert "raise KeyError('k')" in info.value.remote_traceback  # the source lines come along
    shown = "".join(traceback.format_exception(info.value))
    assert "raise KeyError('k')" in shown  # the host-side traceback shows the lines the sandbox sent
    assert "_runtime.py" not in info.value.remote_traceback  # capbridge's own frames are trimmed


def test_malformed_frames_end_the_connection():
    from capbridge._errors_data import error_from_data

    for frames in [("x",), ((1, 2, 3, ""),), (("f", -1, "g", ""),), (("f", 1, "g\x00\n", ""),),
                   tuple([("f", 1, "g", "")] * 65), (("f", 1, "g", "x" * 1001),)]:
        with pytest.raises(ProtocolError, match="malformed error data"):
            error_from_data(("ValueError", (), "m", "", {"frames": frames}), trusted=False)


def test_sandbox_classes_keep_their_own_names(sb):
    alpha = sb.eval("type('Alpha', (), {})")
    beta = sb.eval("type('Beta', (), {})")
    assert "Alpha" in repr(alpha) and "Beta" in repr(beta)


def test_host_context_manager_exit_gets_the_builtin_exception(sandbox_factory):
    """A host ``__exit__`` sees what the sandbox's ``with`` block raised: a built-in type
    as itself with its arguments, anything else as RemoteError; its answer suppresses."""

    class Guard:
        def __init__(self):
            self.seen = []

        @expose
        def __enter__(self):
            return self

        @expose
        def __exit__(self, et, ev, tb):
            self.seen.append((et, ev, tb))
            return isinstance(ev, KeyError)

    guard = Guard()
    sb = sandbox_factory({"guard": guard, "narrow": facet(guard, "__enter__", "__exit__")})
    sb.exec("with guard:\n    raise KeyError('k')\n")  # suppressed by the host's answer
    sb.exec("try:\n    with guard:\n        raise FileNotFoundError(2, 'gone')\n"
            "except FileNotFoundError as e:\n    assert e.errno == 2\n")
    sb.exec("class Mine(Exception):\n    pass\n"
            "try:\n    with narrow:\n        raise Mine('m')\nexcept Mine:\n    pass\n")
    sb.exec("with narrow:\n    pass\n")
    (et1, ev1, tb1), (et2, ev2, _), (et3, ev3, _), (et4, ev4, _) = guard.seen
    assert et1 is KeyError and ev1.args == ("k",) and tb1 is None
    assert et2 is FileNotFoundError and (ev2.errno, ev2.strerror) == (2, "gone")
    assert et3 is RemoteError and ev3.type_name == "Mine" and ev3.message == "m"
    assert (et4, ev4) == (None, None)


def test_sandbox_collects_garbage(sandbox_factory):
    # The fork server imports with the collector off; its sandboxes run with it on.
    sb = sandbox_factory()
    assert sb.eval("__import__('gc').isenabled()") is True
