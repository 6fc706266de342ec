"""A plugin stuck in an endless loop."""


def on_edited(paragraph):
    while True:
        pass


events.on("edited", on_edited)
