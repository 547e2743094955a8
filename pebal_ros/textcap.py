"""One rule for echoing text we did not write: message fields, parameter values, library errors.

A camera (or anyone on the DDS domain) chooses a CompressedImage's ``format``, an Image's
``encoding`` and the ``model`` parameter; an error that quotes them whole would put megabytes into
every log line and every /diagnostics message. :func:`capped` bounds such text and makes control
characters visible, so an echoed string is always one short line.
"""
from __future__ import annotations

import re

MAX_ECHO_CHARS = 256    # longer than any path, summary or reason of our own; far shorter than an attack
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def capped(text: object, limit: int = MAX_ECHO_CHARS) -> str:
    """``str(text)`` cut to ``limit`` characters (with how long it was), control characters as ``\\xNN``."""
    s = text if isinstance(text, str) else str(text)
    cut = len(s) > limit
    head = s[:limit] if cut else s
    head = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", head)
    return f"{head}... ({len(s)} characters)" if cut else head
