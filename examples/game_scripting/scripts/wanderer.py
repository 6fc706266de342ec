# Walks round a square, turning right whenever it is blocked.

import itertools

turns = itertools.cycle([(1, 0), (0, 1), (-1, 0), (0, -1)])
direction = next(turns)


def tick(n):
    global direction
    for _ in range(4):
        if me.move(*direction):
            return
        direction = next(turns)
