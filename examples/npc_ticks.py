"""Game scripting: NPC scripts ticked sixty times, each tick with a 5 ms budget.

Every NPC's script lives in its own sandbox and keeps its state between ticks. A tick
that runs over its budget is interrupted and skipped; the NPC lives on. Only a script
that cannot be stopped at all is killed.

Run:  python examples/npc_ticks.py
"""

from capbridge import CallTimeout, Limits, Sandbox, SandboxError, expose


class World:
    """What NPC scripts may see and do."""

    def __init__(self) -> None:
        self.moves: dict[str, int] = {}

    @expose
    def move(self, who: str, steps: int) -> None:
        """Move ``who`` by ``steps``."""
        self.moves[who] = self.moves.get(who, 0) + steps


SCRIPTS = {
    "walker": "def tick(n):\n    world.move('walker', 1)\n",
    "thinker": (  # usually quick, sometimes lost in thought for far too long
        "import time\n"
        "def tick(n):\n"
        "    if n % 20 == 19:\n"
        "        time.sleep(1)\n"
        "    world.move('thinker', 2)\n"
    ),
    "looper": (  # runs away on tick 30 and refuses to stop: a C-level loop
        "def tick(n):\n"
        "    if n == 30:\n"
        "        sum(range(10 ** 12))\n"
        "    world.move('looper', 3)\n"
    ),
}


def main() -> None:
    world = World()
    npcs = {}
    for name, source in SCRIPTS.items():
        sb = Sandbox(grants={"world": world}, limits=Limits(memory_mb=128, cpu_seconds=None))
        sb.interrupt_grace = 0.2
        npcs[name] = (sb, sb.load(source, name=f"npc_{name}", timeout=1))
    skipped = {name: 0 for name in npcs}
    try:
        for frame in range(60):
            for name, (sb, npc) in npcs.items():
                if not sb.alive:
                    continue
                try:
                    with sb.deadline(0.005):
                        npc.tick(frame)
                except CallTimeout:
                    skipped[name] += 1
                except SandboxError as exc:
                    print(f"{name} was removed on tick {frame}: {type(exc).__name__}")
        for name, (sb, _) in npcs.items():
            state = "alive" if sb.alive else "removed"
            print(f"{name}: moved {world.moves.get(name, 0)}, ticks skipped {skipped[name]}, {state}")
    finally:
        for sb, _ in npcs.values():
            sb.close()


if __name__ == "__main__":
    main()
