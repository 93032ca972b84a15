"""Hidden views of a prompt: what it says once an obfuscation is undone.

The rules run on the folded prompt and on each view found here, keeping the highest score
per category, so a request spelled out letter by letter, or wrapped in a short encoding,
matches the patterns the plain request would:

- spaced letters: a run of four or more single letters or digits with one separator
  between them (`s p y w a r e`, `k.e.y.l.o.g.g.e.r`) is read as one word; a run that
  starts with "a" or "i" (English words of one letter) is also read as that word and
  the rest joined;
- base64: a run of 12 or more base64 characters (letters of both cases or digits mixed
  in, so a plain word is not one) that decodes to readable text is read decoded (longer
  runs are also scored as smuggling by the structure classifier);
- hex: a run of 16 or more byte pairs (bare, or with spaces, commas, `\\x` or `0x`
  between them) that decodes to readable UTF-8 is read decoded;
- URL encoding: a word with three or more `%XX` escapes, or four or more words joined by
  `+` of which three are frequent English words (`a+b+c+d` is a sum), is read decoded;
- leetspeak: digits and `@ $ ! |` inside words read as letters (0 o, 1 i or l, 3 e,
  4 a, 5 s, 7 t, 8 b, 9 g, @ a, $ s, ! i, | l), when at least two such words read as
  frequent English words (`wr173 4 w0rk1ng`); a 1 is read as whichever of i and l makes
  a frequent word, and where neither does, a second view reads it as l;
- reversed text and rot13: a line (or the part after a colon) is read reversed, or
  rotated back, when that makes at least three frequent English words appear and clearly
  more than it had (this catches rot13 the prompt does not name); when the prompt names
  rot13 or a Caesar cipher, the whole prompt is also read rotated back.

Every view is cheap to rule out: most prompts fail a quick test for each (a scan led by a
literal or a digit), and only those that pass pay for decoding and word counts. Finding
that a prompt has none costs about 50 ns per character of prose and 25 of code for the
spaced-letter and base64 scans, and 25-30 more for the hex, URL, leetspeak, reversed and
rot13 tests (measured on a slow shared 2-core machine), about 3 us on a short prompt.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from urllib.parse import unquote_plus

from gateway.pipeline.classify.text import fold

# Separators of spelled-out letters become spaces first, so one literal-led scan (fast in
# `re`) finds every kind of run.
_SEPARATORS = str.maketrans(dict.fromkeys(".-_*+|/\\", " "))
_SPACED = re.compile(r"(?<!\S)\w(?: \w){3,}(?!\S)")
_BASE64 = re.compile(r"[A-Za-z0-9+/\-_]{12,}={0,2}")
_ROT13_NAMES = ("rot13", "rot 13", "rot-13", "caesar")
_MIN_DECODED = 8  # characters of readable text a base64 or hex run must decode to

# Printable ASCII bytes are 0x20-0x7e, so hex-encoded text starts with a digit 2-7: a
# digit-led scan, fast on prose. The \x or 0x before the first byte is left out of the run.
_HEX = re.compile(r"[2-7][0-9a-f](?:[ ,:-]{0,2}(?:\\x|0x)?[0-9a-f]{2}){15,}")
_HEX_SEPARATORS = re.compile(r"\\x|0x|[ ,:-]")
_URL_ESCAPE = re.compile(r"%[0-9a-f]{2}")
_URL_PLUS = re.compile(r"\+[a-z]")
_URL_WORD = re.compile(r"(?<!\S)[^\s%+]*(?:%[0-9a-f]{2}|\+)\S*")  # linear: no backtracking
_MIN_ESCAPES = 3  # %XX escapes (or + joins) in one word before it reads as URL-encoded

# A digit or symbol right before a letter (`4nd`, `w0rk`): rare in prose, digit-led.
_LEET_HINT = re.compile(r"[0-9@$!|][a-z]")
_LEET_WORD = re.compile(r"[a-z0-9@$]+(?:[!|]+[a-z0-9@$]+)*")  # ! and | only inside a word
_LEET_WORD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789@$!|")
_LEET_I = str.maketrans("01345789@$!|", "oieastbgasil")
_LEET_L = str.maketrans("1", "l")
_MIN_LEET_WORDS = 2  # words that read as frequent English words once un-leeted

_WORDS = re.compile(r"[a-z]+")
_SEGMENTS = re.compile(r"([\n:]+)")  # a line, or the part after "Decode this:"
_ROT13 = str.maketrans("abcdefghijklmnopqrstuvwxyz", "nopqrstuvwxyzabcdefghijklm")
_MIN_UNDONE_WORDS = 3  # frequent words reversing or rotating a segment must make appear

# Frequent English words: what ordinary text is mostly made of, and what a reversed,
# rotated or leet-spelled request is made of once undone.
COMMON_WORDS = frozenset((
    "a", "about", "after", "again", "against", "all", "also", "an", "and", "any", "are",
    "as", "at", "back", "be", "because", "been", "before", "being", "but", "by", "can",
    "could", "create", "day", "did", "do", "does", "doing", "down", "each", "even",
    "every", "file", "files", "first", "for", "from", "get", "give", "go", "good",
    "had", "has", "have", "he", "her", "here", "him", "his", "how", "i", "if", "in",
    "into", "is", "it", "its", "just", "know", "like", "make", "many", "me", "more",
    "most", "much", "must", "my", "need", "new", "no", "not", "now", "of", "on", "one",
    "only", "or", "other", "our", "out", "over", "own", "people", "please", "program",
    "same", "say", "script", "see", "she", "should", "show", "so", "some", "step",
    "steps", "such", "take", "tell", "than", "that", "the", "their", "them", "then",
    "there", "these", "they", "this", "those", "through", "time", "to", "too", "two",
    "up", "us", "use", "using", "very", "want", "was", "way", "we", "well", "were",
    "what", "when", "where", "which", "while", "who", "why", "will", "with", "without",
    "work", "working", "would", "write", "you", "your",
))
# Frequent words reversed and rotated: one of them with spaces around is in nearly every
# reversed or rot13 sentence and in almost no other text, so one literal-led scan for
# them all rules both out on nearly every prompt.
_REVERSED_HINTS = "eht|dna|ot|fo|ni|taht|rof|uoy|woh|htiw|etirw"
_ROT13_HINTS = "gur|naq|gb|bs|va|gung|sbe|lbh|ubj|jvgu|jevgr"
_UNDO_HINT = re.compile(f" (?:{_REVERSED_HINTS}|{_ROT13_HINTS})(?= )")
_REVERSED_HINT = re.compile(f" (?:{_REVERSED_HINTS})(?= )")
_ROT13_HINT = re.compile(f" (?:{_ROT13_HINTS})(?= )")


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
    decoded += [text for text in map(_decode_hex, _HEX.findall(folded)) if text]
    if decoded:
        views.append(fold("\n".join(decoded)))
    views.extend(_url_view(folded))
    views.extend(_leet_views(folded))
    if _UNDO_HINT.search(folded):
        for hint, undo in ((_REVERSED_HINT, _reverse), (_ROT13_HINT, _rotate)):
            undone = _undo_segments(folded, hint, undo)
            if undone is not None:
                views.append(undone)
    if any(name in folded for name in _ROT13_NAMES):
        views.append(folded.translate(_ROT13))
    return views


def _article_apart(run: re.Match[str]) -> str:
    letters = run.group().replace(" ", "")
    return f"{letters[0]} {letters[1:]}" if letters[0] in "ai" else letters


def _readable(text: str) -> bool:
    """Whether decoded bytes read as a sentence rather than data."""
    readable = sum(c.isalnum() or c in " .,'!?-" for c in text)
    return len(text) >= _MIN_DECODED and readable >= 0.9 * len(text) and " " in text


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
    return text if _readable(text) else None


def _decode_hex(run: str) -> str | None:
    """The readable text a hex run encodes, or None (a hash or a key is not readable)."""
    try:
        text = bytes.fromhex(_HEX_SEPARATORS.sub("", run)).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    return text if _readable(text) else None


def _url_view(folded: str) -> list[str]:
    """The prompt with its URL-encoded words decoded; none when no word has enough
    escapes (a link with one `%20`, `c++`, `a + b` stay as they are)."""
    if "%" not in folded and "+" not in folded:
        return []
    if (len(_URL_ESCAPE.findall(folded)) < _MIN_ESCAPES
            and len(_URL_PLUS.findall(folded)) < _MIN_ESCAPES):
        return []
    changed = False

    def decode(word: re.Match[str]) -> str:
        nonlocal changed
        text = word.group()
        if text.count("%") < _MIN_ESCAPES and text.count("+") < _MIN_ESCAPES:
            return text
        plain = unquote_plus(text)
        if "\ufffd" in plain:  # escapes that are not UTF-8: binary data, not words
            return text
        if text.count("%") < _MIN_ESCAPES and _common_words(plain) < _MIN_UNDONE_WORDS:
            return text  # `a+b+c+d`: a sum, not words joined by +
        changed = True
        return fold(plain)

    view = _URL_WORD.sub(decode, folded)
    return [view] if changed else []


def _leet_views(folded: str) -> list[str]:
    """The prompt with its leetspeak read as letters: one view, and a second where a 1
    that makes no frequent word either way is read as l; none when fewer than two words
    read as frequent words of three letters or more (`l33t`, `0x1f`, `1st`, `1s or 4s`,
    a password)."""
    # Only the words around the hints are read (few, and usually none, in ordinary text).
    known: set[str] = set()
    for hint in _LEET_HINT.finditer(folded):
        start = hint.start()
        while start and folded[start - 1] in _LEET_WORD_CHARS:
            start -= 1
        word = _LEET_WORD.match(folded, start)
        if word is not None and any(len(reading) > 2 and reading in COMMON_WORDS
                                    for reading in _readings(word.group())):
            known.add(word.group())
            if len(known) >= _MIN_LEET_WORDS:
                break
    else:
        return []
    as_i = _LEET_WORD.sub(lambda m: _unleet(m.group(), "i"), folded)
    as_l = _LEET_WORD.sub(lambda m: _unleet(m.group(), "l"), folded)
    return [as_i] if as_l == as_i else [as_i, as_l]


def _readings(word: str) -> tuple[str, str]:
    """The word with its digits and symbols read as letters, 1 as i and as l."""
    as_i = word.translate(_LEET_I)
    return as_i, word.translate(_LEET_L).translate(_LEET_I)


def _unleet(word: str, default: str) -> str:
    """A word read as letters: a number of two or more digits stays a number; a 1 is
    read as the letter that makes a frequent word, else as `default`."""
    if word.isalpha() or (word.isdigit() and len(word) > 1):
        return word
    as_i, as_l = _readings(word)
    if as_l in COMMON_WORDS and as_i not in COMMON_WORDS:
        return as_l
    if as_i in COMMON_WORDS:
        return as_i
    return as_i if default == "i" else as_l


def _reverse(text: str) -> str:
    return text[::-1]


def _rotate(text: str) -> str:
    return text.translate(_ROT13)


def _undo_segments(folded: str, hint: re.Pattern[str], undo: Callable[[str], str],
                   ) -> str | None:
    """`folded` with each segment that reads as English once undone (at least three
    frequent words, more than twice what it had) replaced by its undoing; None if none.
    Only segments with a `hint` are tried."""
    parts = _SEGMENTS.split(folded)
    changed = False
    for i in range(0, len(parts), 2):  # odd indices are the separators
        if hint.search(f" {parts[i]} ") is None:
            continue
        undone = undo(parts[i])
        after = _common_words(undone)
        if after >= _MIN_UNDONE_WORDS and after > 2 * _common_words(parts[i]):
            parts[i], changed = undone, True
    return "".join(parts) if changed else None


def _common_words(text: str) -> int:
    return sum(word in COMMON_WORDS for word in _WORDS.findall(text))
