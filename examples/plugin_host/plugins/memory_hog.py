"""A plugin that tries to cache far more than it may."""


def on_edited(paragraph):
    cache = []
    while True:
        cache.append(bytearray(16 * 1024 * 1024))


events.on("edited", on_edited)
