"""A text editor that runs third-party plugins, each in its own sandbox.

Run:  python examples/plugin_host/app.py

Every file in plugins/ is a plugin. It gets two grants: ``doc``, a facet of the
document (read-only, or able to append for plugins listed in WRITERS), and
``events``, where it registers callbacks. A plugin that crashes, hangs or eats memory
is stopped and reported; the others keep working. Half-way through, the user turns
off one plugin's access to the document: revoke() cuts it off at once.
"""

from __future__ import annotations

import pathlib
import sys

from capbridge import Limits, RemoteError, Sandbox, SandboxError, expose, facet, revocable

PLUGINS = pathlib.Path(__file__).with_name("plugins")
LIMITS = Limits(memory_mb=128, cpu_seconds=10, wall_seconds=1)  # per plugin, per callback
EVENTS = ("edited", "saved")
WRITERS = {"signature"}  # plugins allowed to add to the document


class Document:
    """The editor's document: a title and paragraphs. Plugins see facets of it."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.paragraphs: list[str] = []
        self.path = "/home/me/secret-plans.txt"  # never in a facet: plugins cannot see it

    def text(self) -> str:
        """The whole document as one string."""
        return "\n\n".join([self.title, *self.paragraphs])

    def append(self, paragraph: str) -> None:
        """Add a paragraph at the end."""
        self.paragraphs.append(str(paragraph))


class Events:
    """Where one plugin subscribes to the editor's events."""

    def __init__(self) -> None:
        self.handlers: dict[str, list] = {name: [] for name in EVENTS}

    @expose
    def on(self, event: str, callback) -> None:
        """Call ``callback(payload)`` on ``event`` (one of: edited, saved)."""
        if event not in self.handlers:
            raise ValueError(f"unknown event {event!r}; events are: {', '.join(EVENTS)}")
        self.handlers[event].append(callback)  # a proxy: calling it runs the plugin's function


class Plugin:
    def __init__(self, path: pathlib.Path, doc: Document) -> None:
        self.name = path.stem
        names = ("title", "text", "append") if self.name in WRITERS else ("title", "text")
        self.doc_access, self._revoke = revocable(facet(doc, *names))
        self.revoked = False
        self.events = Events()
        self.sandbox = Sandbox({"doc": self.doc_access, "events": self.events}, limits=LIMITS)
        self.sandbox.exec(path.read_text(), filename=str(path))

    def revoke(self) -> None:
        self._revoke()  # every use of doc_access, however it travelled, now fails
        self.revoked = True

    def emit(self, event: str, payload: object) -> None:
        for callback in self.events.handlers[event]:
            message = callback(payload)
            if message:
                print(f"  [{self.name}] {message}")


class Editor:
    def __init__(self, title: str) -> None:
        self.doc = Document(title)
        self.plugins: dict[str, Plugin] = {}

    def load_plugins(self, folder: pathlib.Path) -> None:
        for path in sorted(folder.glob("*.py")):
            self.plugins[path.stem] = Plugin(path, self.doc)
        print(f"loaded {len(self.plugins)} plugins: {', '.join(self.plugins)}")

    def emit(self, event: str, payload: object = None) -> None:
        for plugin in list(self.plugins.values()):
            try:
                plugin.emit(event, payload)
            except RemoteError as exc:  # the plugin raised: report it, keep the plugin
                print(f"  ! {plugin.name} failed: {exc.type_name}: {exc.message}")
            except SandboxError as exc:  # crashed, hung or out of memory: its sandbox is gone
                print(f"  ! {plugin.name} stopped: {exc}")
                del self.plugins[plugin.name]

    def type_paragraph(self, text: str) -> None:
        print(f"\n== you type: {text!r}")
        self.doc.append(text)
        self.emit("edited", text)

    def save(self) -> None:
        print("\n== you save")
        self.emit("saved")

    def close(self) -> None:
        for plugin in self.plugins.values():
            plugin.sandbox.close()


def main() -> int:
    editor = Editor("Plans")
    editor.load_plugins(PLUGINS)
    try:
        editor.type_paragraph("Sandboxes keep plugins away from the host.")
        editor.save()
        print("\n== you turn off spell_check's access to the document")
        editor.plugins["spell_check"].revoke()
        editor.type_paragraph("Revoked access stays revoked.")
        running = [p.name + (" (no document access)" if p.revoked else "") for p in editor.plugins.values()]
        print(f"\nstill running: {', '.join(running)}")
        print("the document now reads:\n" + "\n".join("  | " + line for line in editor.doc.text().splitlines()))
    finally:
        editor.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
