"""capbridge in one minute: grant an object, run untrusted code, watch it bounce off
the kernel confinement.

Run:  python examples/demo.py
"""

from capbridge import Limits, RemoteError, Sandbox, expose


class Inventory:
    """A host object. Only the methods marked @expose are reachable from the sandbox."""

    def __init__(self) -> None:
        self._items: dict[str, int] = {}

    @expose
    def add(self, name: str, qty: int) -> None:
        """Add ``qty`` items called ``name``."""
        self._items[name] = self._items.get(name, 0) + qty

    @expose
    def count(self, name: str) -> int:
        """How many ``name`` items there are."""
        return self._items.get(name, 0)

    def reset(self) -> None:  # not exposed: the sandbox cannot call it
        self._items.clear()


PLUGIN = '''
def restock(names):
    for name in names:
        inventory.add(name, 10)
    return {name: inventory.count(name) for name in names}
'''

ATTACKS = {
    "read /etc/passwd": "open('/etc/passwd').read()",
    "open a socket": "__import__('socket').create_connection(('127.0.0.1', 22))",
    "start a process": "__import__('subprocess').run(['id'])",
    "call a method that is not exposed": "inventory.reset()",
}


def main() -> None:
    inventory = Inventory()
    limits = Limits(memory_mb=256, cpu_seconds=5, wall_seconds=10)
    with Sandbox(grants={"inventory": inventory}, limits=limits) as sb:
        print("confinement:", ", ".join(layer for layer, ok, _ in sb.confinement_report if ok))
        sb.exec("inventory.add('apple', 3)")
        print("apples counted inside the sandbox:", sb.eval("inventory.count('apple')"))

        plugin = sb.load(PLUGIN, name="plugin")
        print("plugin.restock ->", plugin.restock(["pear", "plum"]))
        print("the host object really changed:", inventory.count("pear"))

        print("a host function shipped by value: pow(2, 10) =", sb.call(pow, 2, 10))
        sb.exec("print('hello from inside the sandbox')")

        for what, code in ATTACKS.items():
            try:
                sb.eval(code)
                print(f"  {what}: ALLOWED (this should not happen)")
            except RemoteError as err:
                print(f"  {what}: refused ({err.type_name}: {err.message})")
        print("stats:", {k: v for k, v in sb.stats().items() if k != "tables"})


if __name__ == "__main__":
    main()
