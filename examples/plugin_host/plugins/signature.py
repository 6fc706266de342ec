"""Signs the document when it is saved (this plugin may append to it)."""


def on_saved(_):
    if not doc.text().endswith("-- sent from a sandbox"):
        doc.append("-- sent from a sandbox")
        return "signed the document"


def on_edited(_):
    try:
        doc.path  # not in this plugin's facet
    except AttributeError as exc:
        return f"cannot see the file path: {exc}"


events.on("saved", on_saved)
events.on("edited", on_edited)
