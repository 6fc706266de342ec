"""Counts the words of the document after every edit."""


def on_edited(paragraph):
    words = len(doc.text().split())
    return f"{words} words"


events.on("edited", on_edited)
