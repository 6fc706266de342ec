"""Flags words it does not know."""

KNOWN = {"plans", "sandboxes", "keep", "plugins", "away", "from", "the", "host", "access", "stays"}


def on_edited(paragraph):
    words = [w.strip(".,").lower() for w in doc.text().split()]
    unknown = sorted({w for w in words if w not in KNOWN})
    return f"unknown words: {', '.join(unknown)}" if unknown else "no typos"


events.on("edited", on_edited)
