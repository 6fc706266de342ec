"""A grid game whose NPCs are untrusted scripts, one sandbox each.

Run:  python examples/game_scripting/app.py [--ticks N] [--budget SECONDS]

Every file in scripts/ drives one NPC. Its sandbox is granted ``me``, a facet of that
NPC's own unit with three methods (move, look, position): no other unit, no world,
no files. Each tick the game calls every script's ``tick(n)`` at once with
``capbridge.gather`` and a time budget per call. A script that runs past its budget
is interrupted and loses its turn; one that cannot be interrupted is removed from the
game; one that raises loses its turn. The board is printed after every tick.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import capbridge
from capbridge import CallTimeout, Limits, RemoteError, Sandbox, SandboxError, facet

SCRIPTS = pathlib.Path(__file__).with_name("scripts")
LIMITS = Limits(memory_mb=64, cpu_seconds=10, wall_seconds=5)  # per NPC sandbox
LAYOUT = """
####################
#1..$......#....$..#
#.....$....#.......#
#..2.......#..$..3.#
#...####...........#
#......#....$...####
#.$..4.#...........#
#......#...5.....$.#
####################
"""


class World:
    """The board: walls, gold and the units standing on it."""

    def __init__(self, layout: str) -> None:
        self.rows = [list(row) for row in layout.strip().splitlines()]
        self.starts = {}
        for y, row in enumerate(self.rows):
            for x, ch in enumerate(row):
                if ch.isdigit():
                    self.starts[int(ch)] = (x, y)
                    row[x] = "."
        self.units: dict[str, Unit] = {}
        self.tick = 0

    def add_unit(self, name: str) -> Unit:
        taken = {unit.letter for unit in self.units.values()}
        letter = next(ch for ch in name.upper() + "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if ch.isalpha() and ch not in taken)
        x, y = self.starts[len(self.units) + 1]
        unit = self.units[name] = Unit(self, name, letter, x, y)
        return unit

    def remove_unit(self, name: str) -> None:
        del self.units[name]

    def at(self, x: int, y: int) -> str:
        """What stands on a square: a unit's letter, or the floor, a wall or gold."""
        if not (0 <= y < len(self.rows) and 0 <= x < len(self.rows[y])):
            return "#"
        for unit in self.units.values():
            if (unit.x, unit.y) == (x, y):
                return unit.letter
        return self.rows[y][x]

    def render(self) -> str:
        board = ["".join(self.at(x, y) for x in range(len(row))) for y, row in enumerate(self.rows)]
        scores = "  ".join(f"{u.letter}={u.name} {u.gold}$" for u in self.units.values())
        return "\n".join(board + [scores])


class Unit:
    """One NPC's unit. Its script reaches it through ``facet(unit, "move", "look", "position")``."""

    def __init__(self, world: World, name: str, letter: str, x: int, y: int) -> None:
        self._world = world
        self.name, self.letter = name, letter
        self.x, self.y = x, y
        self.gold = 0
        self._moved_on = -1

    def position(self) -> tuple[int, int]:
        """Where this unit stands, as (x, y)."""
        return self.x, self.y

    def look(self) -> list[str]:
        """The 5x5 square around this unit, as rows of characters (the unit at the centre)."""
        return ["".join(self._world.at(self.x + dx, self.y + dy) for dx in range(-2, 3)) for dy in range(-2, 3)]

    def move(self, dx: int, dy: int) -> bool:
        """Step one square (dx, dy in -1, 0, 1; not diagonally), once per tick.

        Returns False when the square is a wall or another unit, or this unit has
        already moved this tick. Stepping on gold picks it up.
        """
        if not (isinstance(dx, int) and isinstance(dy, int) and abs(dx) + abs(dy) == 1):
            raise ValueError("move(dx, dy) takes one step: (1, 0), (-1, 0), (0, 1) or (0, -1)")
        target = self._world.at(self.x + dx, self.y + dy)
        if self._moved_on == self._world.tick or target not in ".$":
            return False
        self._moved_on = self._world.tick
        self.x, self.y = self.x + dx, self.y + dy
        if target == "$":
            self.gold += 1
            self._world.rows[self.y][self.x] = "."
        return True

    def teleport(self, x: int, y: int) -> None:
        """Put the unit anywhere (the game master's tool; not in any script's facet)."""
        self.x, self.y = x, y


class NPC:
    """A script in its own sandbox, controlling one unit."""

    def __init__(self, path: pathlib.Path, world: World) -> None:
        self.name = path.stem
        self.unit = world.add_unit(self.name)
        me = facet(self.unit, "move", "look", "position")
        self.sandbox = Sandbox({"me": me}, limits=LIMITS)
        self.script = self.sandbox.load(path.read_text(), name=f"npc_{self.name}", timeout=2)


def load_npcs(world: World) -> list[NPC]:
    npcs = []
    try:
        for path in sorted(SCRIPTS.glob("*.py")):
            npcs.append(NPC(path, world))
    except BaseException:
        for npc in npcs:
            npc.sandbox.close()
        raise
    return npcs


def play_tick(world: World, npcs: list[NPC], budget: float) -> list[NPC]:
    """Run every NPC's ``tick`` at once; report what went wrong; return the NPCs still in the game."""
    results = capbridge.gather([(npc.script.tick, world.tick) for npc in npcs],
                               timeout=budget, return_exceptions=True)
    still_playing = []
    for npc, result in zip(npcs, results):
        if isinstance(result, CallTimeout):  # interrupted; the sandbox lives on
            print(f"  {npc.name} ran past its {budget * 1000:.0f} ms budget: interrupted, skips this turn")
        elif isinstance(result, RemoteError):  # the script raised; it keeps playing
            print(f"  {npc.name}'s tick failed: {result.type_name}: {result.message}")
        elif isinstance(result, SandboxError):  # could not be stopped, crashed, out of memory
            print(f"  {npc.name} removed from the game: {type(result).__name__}: {result}")
            world.remove_unit(npc.name)
            npc.sandbox.close()
            continue
        still_playing.append(npc)
    return still_playing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ticks", type=int, default=8, help="how many ticks to play (default 8)")
    parser.add_argument("--budget", type=float, default=0.1, help="seconds each script may take per tick")
    args = parser.parse_args(argv)
    world = World(LAYOUT)
    npcs = load_npcs(world)
    print(f"loaded {len(npcs)} NPC scripts: {', '.join(npc.name for npc in npcs)}")
    print(world.render())
    try:
        for tick in range(args.ticks):
            world.tick = tick
            print(f"\n== tick {tick}")
            npcs = play_tick(world, npcs, args.budget)
            print(world.render())
        gold = sorted(((u.gold, u.name) for u in world.units.values()), reverse=True)
        print(f"\nafter {args.ticks} ticks: " + ", ".join(f"{name} {n}$" for n, name in gold))
    finally:
        for npc in npcs:
            npc.sandbox.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
