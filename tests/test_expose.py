"""``@expose`` on properties keeps what help() shows."""

from __future__ import annotations

import pydoc

from capbridge import expose
from capbridge._expose import interface_of
from conftest import make_sandbox


class Catalog:
    @expose
    @property
    def items(self):
        """All items."""
        return [1, 2]

    @expose
    @property
    def name(self):
        """The catalog's name."""
        return self._name

    @name.setter
    def name(self, value):
        self._name = value

    @property
    def plain(self):
        """Not exposed."""
        return 0


def test_an_exposed_property_keeps_its_docstring():
    assert Catalog.__dict__["items"].__doc__ == "All items."
    assert Catalog.__dict__["name"].__doc__ == "The catalog's name."  # through .setter too
    assert Catalog.__dict__["plain"].__doc__ == "Not exposed."  # control
    text = pydoc.render_doc(Catalog, renderer=pydoc.plaintext)
    assert "All items." in text and "The catalog's name." in text
    assert "marked reachable" not in text
    iface = interface_of(Catalog())
    assert iface.properties["items"].doc == "All items." and iface.properties["name"].settable


def test_the_sandbox_sees_the_property_docstring():
    sb = make_sandbox({"cat": Catalog()})
    try:
        assert sb.eval("type(cat).items.__doc__") == "All items."
        assert sb.eval("cat.items") == [1, 2]
    finally:
        sb.close()
