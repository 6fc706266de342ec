"""Sphinx configuration for the capbridge documentation.

Builds offline (no intersphinx): ``sphinx-build -W -b html docs docs/_build/html``.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(HERE, "_ext"))

project = "capbridge"
author = "the capbridge authors"
copyright = "the capbridge authors"
release = version = "0.1.0"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "capbridge_docs",
]

exclude_patterns = ["_build"]
templates_path = []
html_static_path = []
html_theme = "alabaster"
html_theme_options = {
    "description": "Untrusted Python in a kernel-confined process, with capabilities",
    "fixed_sidebar": True,
}
html_title = "capbridge"

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True}
# Type hints name private helpers (e.g. the Facet class) that have no page of their own.
nitpicky = False
suppress_warnings = []
