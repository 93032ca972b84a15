"""PayloadFilter: embeds the signed mark in prose, redundantly, as the text streams past.

Where a mark may go (an *anchor*): right after a U+0020 SPACE that follows a letter
or closing punctuation on the same line, or right after CJK sentence punctuation
(U+3002 U+FF01 U+FF1F), and only when the next character starts a new grapheme (a
letter, digit, punctuation or symbol, not a combining mark, ZWJ, selector or emoji modifier). Marks
join the grapheme before them (they are Extend characters), so no grapheme, emoji ZWJ
sequence, flag or combining sequence is ever split, and leading indentation, list
markers, headings, table pipes and Markdown hard breaks are left alone. A space with a
digit on either side is no anchor, so "1 000 000", "2024 12 31", "12 March 2025" and
"5 kg" stay whole for whatever parses them (only U+0020 is ever an anchor, so groups
split by thin or no-break spaces are never marked either); nor is a space before a |
(the end of a table cell, in a table written without leading pipes).

Where a mark never goes: fenced code (``` or ~~~, at any indentation), indented code
lines (4+ spaces or a tab), inline code spans, math ($$ $$, \\[ \\], \\( \\) and inline
$ $), Markdown table rows (lines that start with |), HTML tags and autolinks (<...>),
Markdown link targets ](...), URLs, and anything between braces { } in prose (unfenced
JSON). A whole response is left unmarked in JSON mode or under structured output (the
filter factory decides that from the request).

Inline math follows Pandoc's rule: a $ followed by a non-space opens it, a $ after a
non-space and not followed by a digit closes it, so "$5 and $10" holds no math. The
filter cannot wait for the closing $ without holding text back, so after an opening $
no mark goes until the closing $, a blank line, or INLINE_MATH_SPAN characters: a price
costs the anchors that follow it on that stretch, and inline math longer than that
(rare) is not protected.

Density: the first anchor gets a mark (so short answers carry one), then the next
sentence end at least MIN_GAP prose characters later, or any anchor once MAX_GAP have
passed. A 50-word excerpt (about 300 characters) of prose therefore holds a whole mark.
An answer with no anchor at all ("Yes.") gets one mark at its very end, when it ends in
prose on an ASCII letter, digit or closing punctuation.

Streaming: the decision at an anchor needs only the next character, so the filter holds
nothing back: the mark is emitted at the start of the delta that brings that character,
whole, in one delta. The scan is a per-character state machine (with a regex fast path
over plain runs), so any chunking of the same text gives the same output.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

MIN_GAP = 160
MAX_GAP = 240
INLINE_MATH_SPAN = 160  # characters after an opening $ that get no mark (see above)

# Characters that never change the scanner's state except `prev` and the gap count.
_PLAIN = re.compile("[^\\s`~<>\\[\\](){}$\\\\:/.@\u3002\uff01\uff1f]+")
# Prose with spaces: in the simple state and far from the next mark, nothing to decide.
_SIMPLE = re.compile("[^\\n\\t\\r`~<>\\[\\](){}$\\\\\u3002\uff01\uff1f]+")
_SENTENCE_PUNCT = re.compile("[.!?\u2026\u3002\uff01\uff1f]")
_CJK_STOPS = frozenset("\u3002\uff01\uff1f")  # ideographic full stop, fullwidth ! ?
_SENTENCE_END = frozenset(".!?\u3002\uff01\uff1f\u2026")
_CLOSERS = frozenset(".,;:!?)]\"'\u2019\u201d\u00bb\u2026%")
_QUOTES = frozenset("\"'\u2019\u201d\u00bb)")
_NOT_GRAPHEME_START = frozenset("\uff9e\uff9f")
_FENCE_LINE = re.compile(r"^[ \t]*(`{3,}|~{3,})", re.MULTILINE)


def _starts_grapheme(c: str) -> bool:
    """True when c always begins a new grapheme cluster (so a mark may precede it)."""
    if c in _NOT_GRAPHEME_START or "\U0001f3fb" <= c <= "\U0001f3ff":
        return False
    return unicodedata.category(c)[0] in "LNPS"


class Scanner:
    """Markdown-aware state: decides, character by character, where marks may go."""

    __slots__ = ("_backslash", "_blank", "_brace", "_bt_open", "_bt_run",
                 "_dollar_after_space", "_dollars", "_fence_char", "_fence_len", "_indent",
                 "_lead", "_lead_char", "_lead_len", "_line_code", "_link", "_lt", "_math",
                 "_math_left", "_pending", "_pending_sentence", "_prev", "_prev2",
                 "_rbracket", "_recent", "_tag", "_url")

    def __init__(self) -> None:
        self._prev = "\n"
        self._prev2 = "\n"
        self._recent = ""  # the last four characters of the current token
        self._lead = True  # still in this line's leading whitespace
        self._indent = 0
        self._lead_char = ""  # a leading run of ` or ~ being read
        self._lead_len = 0
        self._line_code = False
        self._blank = True  # the line so far is whitespace only
        self._fence_char = ""
        self._fence_len = 0
        self._bt_open = 0  # length of the backtick run that opened an inline code span
        self._bt_run = 0
        self._dollars = 0
        self._dollar_after_space = False  # the $ run being read follows whitespace
        self._math = ""  # "$$", "\\(", "\\[", or "$": inline, until closed or given up
        self._math_left = 0  # characters an inline "$" span may still run
        self._backslash = False
        self._lt = False
        self._tag = False
        self._rbracket = False
        self._link = 0
        self._brace = 0
        self._url = False
        self._pending = False  # the last character was an anchor candidate
        self._pending_sentence = False

    def prime(self, prompt: str) -> None:
        """Start where a completions prompt left off: inside an open fence, mid-line."""
        open_fence = ""
        for m in _FENCE_LINE.finditer(prompt):
            run = m.group(1)
            if not open_fence:
                open_fence = run
            elif run[0] == open_fence[0] and len(run) >= len(open_fence):
                open_fence = ""
        self._fence_char, self._fence_len = open_fence[:1], len(open_fence)
        if prompt and not prompt.endswith("\n"):
            last = prompt.rsplit("\n", 1)[-1]
            indent = len(last) - len(last.lstrip(" \t"))
            self._lead = False
            self._line_code = (bool(self._fence_char) or indent >= 4 or "\t" in last[:indent]
                               or last[indent:].startswith("|"))
            self._blank = False
            self._prev = prompt[-1]
            self._prev2 = prompt[-2] if len(prompt) > 1 else "\n"

    def ends_markable(self) -> bool:
        """True when a mark may follow the last character of the text (at its end)."""
        prev = self._prev
        return (self.markable() and not self._pending and not self._bt_run
                and prev.isascii() and (prev.isalnum() or prev in ".!?)\"'"))

    def markable(self) -> bool:
        return not (self._fence_char or self._line_code or self._bt_open or self._tag
                    or self._link or self._brace or self._math or self._lead)

    def plain_ok(self) -> bool:
        """True when a run of plain characters may be consumed without per-char steps."""
        return not (self._lead or self._lead_char or self._pending or self._lt
                    or self._bt_run or self._dollars or self._backslash or self._rbracket)

    def simple(self) -> bool:
        """Plain prose: no span open, no run or flag waiting for its next character."""
        return not (self._lead or self._lead_char or self._fence_char or self._line_code
                    or self._bt_open or self._bt_run or self._dollars or self._math
                    or self._lt or self._tag or self._rbracket or self._link or self._brace
                    or self._backslash)

    def span_stop(self) -> str:
        """Inside code, the characters that can end it ("" when not in such a span)."""
        if self._lead or self._lead_char or self._fence_char.startswith("-"):
            return ""
        if self._fence_char or self._line_code:
            return "\n"
        if self._bt_open and not self._bt_run:
            return "`\n"
        return ""

    def skip_span(self, run: str) -> None:
        """Consume characters inside code that are none of span_stop()'s."""
        self._prev2 = run[-2] if len(run) > 1 else self._prev
        self._prev = run[-1]
        self._blank = False

    def skippable(self, text: str, start: int, end: int, since: int) -> int:
        """How much of the run text[start:end] (a whole _SIMPLE match) holds no anchor
        that can be due for a mark: as much as stays below MIN_GAP, else up to its first
        sentence-ending character (an anchor only becomes due after one) and short of
        MAX_GAP. Reads no further than it returns, plus one character."""
        if since < MIN_GAP - 1:
            return min(end - start, MIN_GAP - 1 - since)
        if since >= MAX_GAP - 1 or (self._pending and since >= MIN_GAP):
            return 0
        if _SENTENCE_PUNCT.search(self._prev2 + self._prev) is not None:
            return 0
        end = min(end, start + MAX_GAP - 1 - since)
        m = _SENTENCE_PUNCT.search(text, start, end)
        return (m.start() if m is not None else end) - start

    def simple_run(self, run: str) -> None:
        """Consume a run of _SIMPLE characters when no anchor in it can take a mark."""
        self._pending = False
        space = run.rfind(" ")
        if space < 0:
            token = self._recent + run
        else:
            token = run[space + 1:]
            self._url = False
        if "://" in token or "www." in token or "@" in token:
            self._url = True
        self._recent = token[-4:]
        self._prev2 = run[-2] if len(run) > 1 else self._prev
        self._prev = run[-1]

    def plain(self, run: str) -> None:
        if self._fence_char.startswith("-"):
            self._fence_char = self._fence_char[1:]  # text after it: not a closing fence
        if self._math == "$":
            self._math_left -= len(run)
        self._prev2 = run[-2] if len(run) > 1 else self._prev
        self._prev = run[-1]
        self._recent = (self._recent + run)[-4:]
        self._blank = False

    def take_pending(self, c: str) -> tuple[bool, bool]:
        """(anchor accepted before c, it was a sentence end); clears the pending flag.
        Never before a digit (a number group, a date) or a | (the end of a table cell)."""
        if not self._pending:
            return False, False
        self._pending = False
        if c == "|" or c.isdigit():
            return False, False
        return _starts_grapheme(c), self._pending_sentence

    def step(self, c: str) -> None:
        if c == "\n":
            self._newline()
            return
        if self._lead:
            if c == " ":
                self._indent += 1
                return
            if c == "\t":
                self._indent += 4
                return
            if c == "\r":
                return
            self._lead = False
            self._blank = False
            if self._fence_char or self._indent < 4:
                if c in "`~":
                    self._lead_char, self._lead_len = c, 1
                    return
                if c == "|":
                    self._line_code = True  # a table row: a mark would join a cell's text
            else:
                self._line_code = True  # indented code (or deep list content): left alone
        if self._lead_char:
            if c == self._lead_char:
                self._lead_len += 1
                return
            self._end_lead_run()
        if self._fence_char or self._line_code:
            if c not in " \t\r" and self._fence_char.startswith("-"):
                self._fence_char = self._fence_char[1:]  # text after it: not a closing fence
            self._prev2, self._prev = self._prev, c
            return
        self._inline(c)
        self._prev2, self._prev = self._prev, c

    def _end_lead_run(self) -> None:
        char, run = self._lead_char, self._lead_len
        self._lead_char, self._lead_len = "", 0
        if self._fence_char:
            # A closing fence: the same character, at least as long, nothing after it.
            # Provisional ("-" prefix) until the line ends with only spaces after it.
            if char == self._fence_char and run >= self._fence_len:
                self._fence_char = "-" + char
            self._line_code = True
        elif run >= 3:
            self._fence_char, self._fence_len = char, run
            self._line_code = True  # the opening line and its info string
        elif char == "`":
            self._bt_run = run
        else:
            self._prev2, self._prev = self._prev, char

    def _close_bt_run(self) -> None:
        run, self._bt_run = self._bt_run, 0
        if not self._bt_open:
            self._bt_open = run
        elif run == self._bt_open:
            self._bt_open = 0

    def _close_dollars(self, after: str) -> None:
        """A run of $ ended with the character `after`."""
        run, self._dollars = self._dollars, 0
        if run >= 2:
            if self._math == "$":
                self._math = ""
            if self._math in ("", "$$"):
                self._math = "" if self._math else "$$"
        elif self._math == "$":
            if not self._dollar_after_space and not after.isdigit():
                self._math = ""  # the closing $
            elif not after.isspace():
                self._math_left = INLINE_MATH_SPAN  # "$5 and $x": this $ may open it
        elif not self._math and not after.isspace():
            self._math, self._math_left = "$", INLINE_MATH_SPAN

    def _inline(self, c: str) -> None:
        if self._bt_run and c != "`":
            self._close_bt_run()
        if self._dollars and c != "$":
            self._close_dollars(c)
        if self._lt:
            self._lt = False
            if c.isascii() and (c.isalpha() or c in "/!?"):
                self._tag = True
        if self._backslash:
            self._backslash = False
            self._escape(c)
            return
        if self._rbracket:
            self._rbracket = False
            if c == "(" and not self._bt_open:
                self._link = 1
                return
        if c == "`":
            self._bt_run += 1
            return
        if self._bt_open:
            return
        if self._math == "$":
            self._math_left -= 1
            # No closing $ in sight: a price, not math. Given up only where an anchor can
            # follow (characters the fast paths never consume), so chunking cannot matter.
            if self._math_left < 0 and (c.isspace() or c in _CJK_STOPS):
                self._math = ""
        if c in " \t\r":
            self._url = False
            self._recent = ""
            if c == " " and self.markable() and self._anchor_after_space():
                self._pending = True
                self._pending_sentence = self._sentence_end()
            return
        self._recent = (self._recent + c)[-4:]
        if c == "$":
            if not self._dollars:
                self._dollar_after_space = self._prev.isspace()
            self._dollars += 1
        elif c == "\\":
            self._backslash = True
        elif c == "<" and not self._tag:
            self._lt = True
        elif c == ">":
            self._tag = False
        elif c == "]":
            self._rbracket = True
        elif self._link and c in "()":
            self._link += 1 if c == "(" else -1
        elif c == "{" and self._math in ("", "$") and not self._tag:
            self._brace += 1
        elif c == "}" and self._brace:
            self._brace -= 1
        elif ((c == "/" and self._prev == "/" and self._prev2 == ":")
              or (c == "." and self._recent == "www.")
              or c == "@"):
            self._url = True  # scheme://, www. or user@host: no CJK anchor until whitespace
        elif c in _CJK_STOPS and self.markable() and not self._url:
            self._pending = True
            self._pending_sentence = True

    def _escape(self, c: str) -> None:
        if c == "(" and not self._math:
            self._math = "\\("
        elif c == "[" and not self._math:
            self._math = "\\["
        elif (c == ")" and self._math == "\\(") or (c == "]" and self._math == "\\["):
            self._math = ""

    def _anchor_after_space(self) -> bool:
        prev = self._prev
        return (prev.isalnum() and not prev.isdigit()) or prev in _CLOSERS

    def _sentence_end(self) -> bool:
        prev = self._prev
        return prev in _SENTENCE_END or (prev in _QUOTES and self._prev2 in _SENTENCE_END)

    def _newline(self) -> None:
        if self._lead_char:
            self._end_lead_run()
        if self._bt_run:
            self._close_bt_run()
        if self._dollars:
            self._close_dollars("\n")
        if self._fence_char.startswith("-"):
            self._fence_char, self._fence_len = "", 0  # the closing fence line ended
        if self._blank:
            # A blank line ends the paragraph and any span left open in it.
            self._bt_open = 0
            self._tag = False
            self._link = self._brace = 0
            if self._math != "$$":
                self._math = ""
        self._pending = self._lt = self._rbracket = self._backslash = self._url = False
        self._lead, self._indent, self._line_code, self._blank = True, 0, False, True
        self._recent = ""
        self._prev2, self._prev = self._prev, "\n"


_CODE_SPAN_STOP = re.compile("[`\n]")


def _next_stop(text: str, start: int, stops: str) -> int:
    """Where the first of `stops` (span_stop's newline, or backtick and newline) is, else
    the end, in one pass over what is skipped: finding each character in turn would scan
    past a newline to the next backtick, line after line in a span a stray one opened."""
    if stops == "\n":
        j = text.find("\n", start)
    else:
        m = _CODE_SPAN_STOP.search(text, start)
        j = m.start() if m is not None else -1
    return j if j >= 0 else len(text)


class PayloadFilter:
    """OutputFilter: inserts `mark` (from `payload.encode_mark`) at anchors in prose.

    The visible text is unchanged: `strip_marks(output) == input` for any input, and the
    output depends only on the concatenated input, never on how it was chunked.
    """

    __slots__ = ("_mark", "_on_finish", "_scan", "_since", "marks")
    # The logprobs' tokens spell the text without the mark: relayed beside it, they would
    # hand the caller an unmarked copy. The relay drops them.
    hides_text = True

    def __init__(self, mark: str, prompt: str = "",
                 on_finish: Callable[[int], None] | None = None) -> None:
        self._mark = mark
        self._scan = Scanner()
        if prompt:
            self._scan.prime(prompt)
        self._on_finish = on_finish
        self._since = 0  # prose characters since the last mark
        self.marks = 0

    def feed(self, delta: str) -> str:
        if not delta:
            return delta
        scan = self._scan
        out: list[str] = []
        i, n = 0, len(delta)
        # End of the _SIMPLE run that reaches i: every later start inside it shares that
        # end, so each character is matched once, not once per stop within a long line.
        simple_end = -1
        while i < n:
            stop = scan.span_stop()
            if stop:
                j = _next_stop(delta, i, stop)
                if j > i:
                    scan.skip_span(delta[i:j])
                    out.append(delta[i:j])
                    i = j
                    continue
            if self.marks and scan.simple():
                if simple_end < i:
                    m = _SIMPLE.match(delta, i)
                    simple_end = m.end() if m is not None else i
                if simple_end > i and (k := scan.skippable(delta, i, simple_end,
                                                           self._since)):
                    run = delta[i:i + k]
                    scan.simple_run(run)
                    self._since += k
                    out.append(run)
                    i += k
                    continue
            if scan.plain_ok():
                m = _PLAIN.match(delta, i)
                if m is not None:
                    run = m.group()
                    if scan.markable():
                        self._since += len(run)
                    scan.plain(run)
                    out.append(run)
                    i = m.end()
                    continue
            c = delta[i]
            accepted, sentence = scan.take_pending(c)
            if accepted and self._due(sentence):
                out.append(self._mark)
                self.marks += 1
                self._since = 0
            scan.step(c)
            if scan.markable():
                self._since += 1
            out.append(c)
            i += 1
        return "".join(out)

    def _due(self, sentence: bool) -> bool:
        if self.marks == 0:
            return True
        return self._since >= MAX_GAP or (sentence and self._since >= MIN_GAP)

    def finish(self) -> str:
        """A short answer with no anchor gets its one mark at the very end."""
        tail = ""
        if self.marks == 0 and self._scan.ends_markable():
            tail = self._mark
            self.marks = 1
        if self._on_finish is not None:
            self._on_finish(self.marks)
            self._on_finish = None
        return tail
