# On tick 3 it starts a computation that cannot be interrupted (one long C call).
# Interrupting it does not help, so the game ends its sandbox and goes on without it.


def tick(n):
    if n == 3:
        sum(range(10**13))
    me.move(-1, 0)
