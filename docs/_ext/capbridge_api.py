"""The API reference shows public parameters only, each with a description.

* Parameters whose names start with ``_`` (internal hooks such as ``_awaiter``) are
  dropped from signatures and from the typed parameter lists.
* A public parameter that its docstring does not describe gets the description in
  :data:`capbridge_params.PARAMETERS`, so the reference describes every one; a
  docstring's own ``:param name:`` always wins.
* Classes users never construct (:data:`capbridge_params.NO_CONSTRUCTOR`) show no
  signature.
"""

from __future__ import annotations

import inspect
from typing import Any

from capbridge_params import NO_CONSTRUCTOR, PARAMETERS

from capbridge._presentation import signature_from_text


def _public(sig: inspect.Signature) -> inspect.Signature:
    return sig.replace(parameters=[p for p in sig.parameters.values() if not p.name.startswith("_")])


def process_signature(app: Any, what: str, name: str, obj: Any, options: Any, signature: str | None,
                      return_annotation: str | None) -> tuple[str | None, str | None] | None:
    annotations = app.env.temp_data.get("annotations", {}).get(name)
    if annotations:
        for key in [k for k in annotations if k.startswith("_")]:
            del annotations[key]
    if what in ("class", "exception") and name in NO_CONSTRUCTOR:
        return "", None
    if not signature:
        return None
    sig = signature_from_text(signature)
    if sig is None:
        return None
    return str(_public(sig)), return_annotation


def _described(lines: list[str]) -> set[str]:
    """Parameter names given a ``:param [type] name:`` field in ``lines``."""
    found = set()
    for line in lines:
        head = line.strip().split(":", 2)
        if len(head) == 3 and not head[0]:
            words = head[1].split()
            if len(words) >= 2 and words[0] in ("param", "parameter", "arg", "argument", "key", "keyword"):
                found.add(words[-1].lstrip("*"))
    return found


def _signature_of(obj: Any) -> inspect.Signature | None:
    try:
        return inspect.signature(obj) if callable(obj) else None
    except (TypeError, ValueError):
        return None


def process_docstring(app: Any, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    if what not in ("class", "exception", "function", "method"):
        return
    sig = _signature_of(obj)
    if sig is None:
        return
    if what in ("class", "exception") and name in NO_CONSTRUCTOR:
        return
    described = _described(lines)
    table = {**PARAMETERS.get(name.rpartition(".")[0] + ".*", {}), **PARAMETERS.get(name, {})}
    missing = [p for p in sig.parameters.values()
               if not p.name.startswith("_") and p.name != "self" and p.name not in described]
    added = [f":param {p.name}: {table[p.name]}" for p in missing if p.name in table]
    if added:
        if lines and lines[-1].strip():
            lines.append("")
        lines.extend(added)


def setup(app: Any) -> dict[str, Any]:
    # After sphinx.ext.autodoc.typehints has recorded the annotations (priority 500).
    app.connect("autodoc-process-signature", process_signature, priority=600)
    app.connect("autodoc-process-docstring", process_docstring)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
