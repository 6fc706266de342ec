"""A plugin with a bug in native code: it dereferences a null pointer."""

import ctypes


def on_edited(paragraph):
    ctypes.string_at(0)  # segmentation fault: the sandbox process dies


events.on("edited", on_edited)
