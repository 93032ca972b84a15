"""Text from clients, made to display as what it is wherever the gateway shows it.

A model name or any other client string can hold characters that are not seen but act:
a newline that starts a forged log line, a terminal escape, a right-to-left override that
reorders what an operator reads, zero-width or tag characters. `visible` writes each
character Python does not count as printable (controls, format characters, separators
other than the space, unassigned code points) as a JSON escape, so the result is still
valid inside a JSON string and decodes back to what was sent.
"""

from __future__ import annotations


def visible(text: str) -> str:
    """`text` with every non-printable character as a \\uXXXX escape (a surrogate pair
    beyond the Basic Multilingual Plane); printable text, in any script, is unchanged."""
    if text.isprintable():  # the common case, checked in C
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _escape(char: str) -> str:
    code = ord(char)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
