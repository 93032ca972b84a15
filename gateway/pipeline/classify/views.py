"""Hidden views of a prompt: what it says once an obfuscation is undone.

The rules run on the folded prompt and on each view found here, keeping the highest score
per category, so a request spelled out letter by letter, or wrapped in a short base64 or
rot13 encoding, matches the patterns the plain request would:

- spaced letters: a run of four or more single letters or digits with one separator
  between them (`s p y w a r e`, `k.e.y.l.o.g.g.e.r`) is read as one word; a run that
  starts with "a" or "i" (English words of one letter) is also read as that word and
  the rest joined;
- base64: a run of 12 or more base64 characters (letters of both cases or digits mixed
  in, so a plain word is not one) that decodes to readable text is read decoded (longer
  runs are also scored as smuggling by the structure classifier);
- rot13: when the prompt names rot13 or a Caesar cipher, the whole prompt is also read
  rotated back.

Most prompts have none of these; finding that costs two regex scans and a translate
(about 35 ns per character).
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re

from gateway.pipeline.classify.text import fold

# Separators of spelled-out letters become spaces first, so one literal-led scan (fast in
# `re`) finds every kind of run.
_SEPARATORS = str.maketrans(dict.fromkeys(".-_*+|/\\", " "))
_SPACED = re.compile(r"(?<!\S)\w(?: \w){3,}(?!\S)")
_BASE64 = re.compile(r"[A-Za-z0-9+/\-_]{12,}={0,2}")
_ROT13_NAMES = ("rot13", "rot 13", "rot-13", "caesar")
_MIN_DECODED = 8  # characters of readable text a base64 run must decode to


def hidden_views(raw: str, folded: str) -> list[str]:
    """Folded texts to score besides `folded` (the fold of `raw`); usually none."""
    views = []
    spaced = folded.translate(_SEPARATORS)
    runs = _SPACED.findall(spaced)
    if runs:
        views.append(_SPACED.sub(lambda m: m.group().replace(" ", ""), spaced))
        if any(run[0] in "ai" for run in runs):  # "a s p y w a r e": "a" + "spyware"
            views.append(_SPACED.sub(_article_apart, spaced))
    decoded = [text for text in map(_decode, _BASE64.findall(raw)) if text]
    if decoded:
        views.append(fold("\n".join(decoded)))
    if any(name in folded for name in _ROT13_NAMES):
        views.append(codecs.encode(folded, "rot13"))
    return views


def _article_apart(run: re.Match[str]) -> str:
    letters = run.group().replace(" ", "")
    return f"{letters[0]} {letters[1:]}" if letters[0] in "ai" else letters


def _decode(run: str) -> str | None:
    """The readable text a base64 run encodes, or None."""
    if (run.isalpha() and (run.islower() or run.isupper())) or run.isdigit():
        return None  # a word, a name in capitals or a number: base64 alphabet, not base64
    body = run.rstrip("=")
    try:
        data = base64.b64decode(body + "=" * (-len(body) % 4),
                                altchars=b"-_" if "-" in run or "_" in run else None)
        text = data.decode("utf-8")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    readable = sum(c.isalnum() or c in " .,'!?-" for c in text)
    if len(text) < _MIN_DECODED or readable < 0.9 * len(text) or " " not in text:
        return None
    return text
