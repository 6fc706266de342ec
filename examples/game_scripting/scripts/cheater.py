# Tries what a script may not do; each attempt fails inside its own tick.

ATTEMPTS = [
    "me.teleport(1, 1)",            # a method of the unit that is not in the facet
    "me._world",                    # the unit's private state
    "open('/etc/passwd').read()",   # the host's files
]


def tick(n):
    if n < len(ATTEMPTS):
        eval(ATTEMPTS[n])
    me.move(1, 0)
