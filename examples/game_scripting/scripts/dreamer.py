# Usually quick; on tick 2 it gets lost in thought (a loop that never ends).
# The game interrupts it at the end of its time budget: it loses that turn only.


def tick(n):
    if n == 2:
        while True:
            pass
    me.move(0, 1 if n % 4 < 2 else -1)
