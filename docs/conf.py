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
    "capbridge_api",
]

exclude_patterns = ["_build"]
templates_path = []
# Furo: a theme made for reading code (wide code blocks, readable type, dark mode).
html_theme = "furo"
html_static_path = ["_static"]
html_css_files = ["capbridge.css"]
html_title = "capbridge"
html_theme_options = {
    "navigation_with_keys": True,
}
pygments_style = "friendly"
pygments_dark_style = "monokai"

autodoc_member_order = "bysource"
# Types go into each parameter's description, so signatures stay short; only
# described parameters are listed (capbridge_api adds a description to each one).
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_default_options = {"members": True}
# Type hints name private helpers (e.g. the Facet class) that have no page of their own.
nitpicky = False
suppress_warnings = []
