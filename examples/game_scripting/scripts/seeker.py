# Walks towards the nearest gold it can see; wanders east and west when it sees none.
# `me` is this NPC's own unit: move(dx, dy), look() and position(), nothing more.

heading = 1


def tick(n):
    global heading
    view = me.look()  # rows of the 5x5 square around the unit; the unit is at the centre
    golds = [(x - 2, y - 2) for y, row in enumerate(view) for x, ch in enumerate(row) if ch == "$"]
    if golds:
        dx, dy = min(golds, key=lambda d: abs(d[0]) + abs(d[1]))
        step = (1 if dx > 0 else -1, 0) if dx else (0, 1 if dy > 0 else -1)
    else:
        step = (heading, 0)
    if not me.move(*step):
        heading = -heading
        me.move(0, 1 if n % 2 else -1)
