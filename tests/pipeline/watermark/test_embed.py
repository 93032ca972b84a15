"""PayloadFilter: invisible, whole, never in code, identical however the text is chunked."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.pipeline.watermark.embed import Scanner
from gateway.pipeline.watermark.payload import MARK_LEN, extract_payloads, strip_marks, verify
from tests.pipeline.watermark.helpers import (
    KID,
    MARK,
    PROSE,
    SECRET,
    mark_offsets,
    run_filter,
    split_at,
)

# Text that stresses graphemes: emoji ZWJ sequences, skin tones, flags, keycaps,
# combining marks, RTL, CJK, halfwidth voiced marks, selectors of its own.
TRICKY = ["👨‍👩‍👧‍👦", "👍🏽", "🇯🇵", "🏳️‍🌈", "1️⃣", "e\u0301", " \u0301", "ｶﾞ", "❤️",
          "مرحبا بالعالم", "שָׁלוֹם", "中文。测试\uff01", "葛\U000e0100", " \U0001f3fb", "\u200d",
          "a\u200db", "\ufe0f", "\r\n", "\t", "  ", "```", "`", "~~~", "<b>", "$$", "{", "}",
          "https://x.y/a", "www.example.com", "[a](b c)", "\\(", "\\[", "好。 Next", "end.\" Then",
          "a@b", " x@y.z ", "$", "$5 ", " $x$ ", "1 000 ", "12 March 2025", "\n| a b | c |\n",
          " | ", "\u00a0", "\u2009"]

texts = st.lists(st.one_of(st.text(max_size=30), st.sampled_from(TRICKY),
                           st.sampled_from(PROSE.split(". "))), max_size=30).map("".join)
cut_lists = st.lists(st.integers(min_value=1, max_value=2000), max_size=40)


@settings(max_examples=150, deadline=None)
@given(texts, cut_lists)
def test_strip_restores_the_text_and_chunking_does_not_matter(text: str, cuts: list[int]
                                                              ) -> None:
    whole, _ = run_filter(text)
    streamed, deltas = run_filter(text, split_at(text, cuts))
    assert streamed == whole
    assert strip_marks(whole) == text
    # Each mark arrives whole inside one delta: stripping delta by delta restores it.
    assert "".join(strip_marks(d) for d in deltas) == text


@settings(max_examples=150, deadline=None)
@given(texts)
def test_marks_never_split_a_grapheme(text: str) -> None:
    out, _ = run_filter(text)
    for off in mark_offsets(out):
        before = text[off - 1] if off else ""
        assert before in (" ", "\u3002", "\uff01", "\uff1f") or (
            off == len(text) and before.isascii())
        if off < len(text):
            after = text[off]
            assert unicodedata.category(after)[0] in "LNPS"
            assert not "\U0001f3fb" <= after <= "\U0001f3ff"


def test_marks_are_found_and_genuine() -> None:
    out, _ = run_filter(PROSE)
    payloads = extract_payloads(out)
    assert len(payloads) == 1
    assert payloads[0].key_id == KID
    assert verify(payloads[0], SECRET)
    assert out.count(MARK) >= 3


def test_any_fifty_word_excerpt_carries_a_whole_mark() -> None:
    out, _ = run_filter(PROSE + " " + PROSE)
    words = out.split(" ")
    for start in range(len(words) - 50):
        excerpt = " ".join(words[start:start + 50])
        assert MARK in excerpt, start


def test_a_short_answer_gets_one_mark_at_its_end() -> None:
    assert run_filter("Yes.")[0] == "Yes." + MARK
    assert run_filter("42")[0] == "42" + MARK
    assert run_filter("`x`")[0] == "`x`"  # ends in code: left alone
    assert run_filter("")[0] == ""


# ---------------------------------------------------------------- never inside code

WORDS = st.sampled_from(PROSE.replace(",", "").replace(".", "").split())
PROSE_SEG = st.lists(WORDS, min_size=1, max_size=12).map(lambda w: " ".join(w) + ".")
CODE = st.lists(st.sampled_from(["x = 1", "return a + b", "if a and b:", "print(x, y)",
                                 "def f(a, b):", "  nested line", "a b c d"]),
                min_size=1, max_size=4).map("\n".join)


@st.composite
def markdown(draw: st.DrawFn) -> tuple[str, list[tuple[int, int]]]:
    """A document and the spans (start, end) where no mark may go."""
    parts: list[str] = []
    forbidden: list[tuple[int, int]] = []
    pos = 0

    def add(text: str, protected: bool) -> None:
        nonlocal pos
        if protected:
            forbidden.append((pos, pos + len(text)))
        parts.append(text)
        pos += len(text)

    for _ in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(["prose", "fence", "tilde", "inline", "url", "link",
                                     "tag", "json", "indented", "math", "latex",
                                     "dollar", "table", "number"]))
        if kind == "prose":
            add(draw(PROSE_SEG) + " ", False)
        elif kind in ("fence", "tilde", "indented", "math"):
            add("\n\n", False)
            code = draw(CODE)
            if kind == "fence":
                add(f"```python\n{code}\n```", True)
            elif kind == "tilde":
                add(f"~~~~\n{code}\n```\n~~~~", True)
            elif kind == "math":
                add(f"$$\n{code}\n$$", True)
            else:
                add("\n".join("    " + line for line in code.split("\n")), True)
            add("\n\n", False)
        elif kind == "inline":
            add(f"`{draw(CODE).replace(chr(10), ' ')}`", True)
            add(" ", False)
        elif kind == "url":
            add(f"https://example.com/{draw(WORDS)}?q={draw(WORDS)}", True)
            add(" ", False)
        elif kind == "link":
            add(f"[{draw(WORDS)} {draw(WORDS)}]", False)
            add(f"(https://example.com/{draw(WORDS)} \"a title with words\")", True)
            add(" ", False)
        elif kind == "tag":
            add(f"<a href=\"/x\" title=\"{draw(WORDS)} {draw(WORDS)}\">", True)
            add(" ", False)
        elif kind == "json":
            add(f"{{\"key\": \"{draw(WORDS)} {draw(WORDS)}\", \"n\": [1, 2]}}", True)
            add(" ", False)
        elif kind == "dollar":
            add(f"${draw(WORDS)} + b = {draw(WORDS)} {draw(WORDS)}$", True)
            add(" ", False)
        elif kind == "table":
            add("\n\n", False)
            add(f"| {draw(WORDS)} {draw(WORDS)} | {draw(WORDS)} |\n|---|---|\n"
                f"| {draw(WORDS)} {draw(WORDS)} | 1 000 |", True)
            add("\n\n", False)
        elif kind == "number":
            add(draw(st.sampled_from(["1 000 000", "2024 12 31", "12 March 2025",
                                      "3\u00a0141 592", "1\u2009000 000,50"])), True)
            add(" ", False)
        else:
            add(f"\\( a + b = {draw(WORDS)} \\)", True)
            add(" ", False)
    return "".join(parts), forbidden


@settings(max_examples=150, deadline=None)
@given(markdown(), cut_lists)
def test_marks_never_inside_code_urls_tags_json_or_math(
        doc: tuple[str, list[tuple[int, int]]], cuts: list[int]) -> None:
    text, forbidden = doc
    out, _ = run_filter(text, split_at(text, cuts))
    assert strip_marks(out) == text
    for off in mark_offsets(out):
        for start, end in forbidden:
            assert not start < off < end, (text[start:end], off - start)


@pytest.mark.parametrize(("text", "expected"), [
    # QA round 4b: number groups, dates, inline math and table cells stay whole.
    ("1 000 000 euros is the sum", [16]),
    ("2024 12 31 is the date", [14]),
    ("On 12 March 2025 we met", [20]),
    ("$E = mc^2$ is famous", [14]),
    ("Pay $5 and $10 now. Then go", [4]),
    ("| Name | Age |\n|---|---|\n| Ann Lee | 31 |", []),
    ("  | Name | Age |\n\nDone here now", [23]),
    ("```\ncode with many spaces in it and more and more words here\n```\n", []),
    ("    indented code line with spaces in it\n    and another line of it\n", []),
    ("Run `a b c d e f g` now", [4]),
    ("Open https://example.com/a/b/c?x=1&y=2 today", [5]),
    ('{"a": "b c d", "e": "f g h"}', []),
    ("- [ ] task one\n- [x] task two", [6]),
    ("# Heading words\n\n| a | b |\n|---|---|", [10]),
])
def test_where_marks_go_in_small_examples(text: str, expected: list[int]) -> None:
    out, _ = run_filter(text)
    assert mark_offsets(out) == expected


def test_a_completions_prompt_that_opened_a_fence_keeps_the_answer_unmarked() -> None:
    answer = "    return a + b and more words\nprint(total of all things)\n```\nDone. It works."
    out, _ = run_filter(answer, prompt="Write it:\n```python\ndef f(a, b):\n")
    offsets = mark_offsets(out)
    assert offsets and all(off > answer.index("Done") for off in offsets)


def test_mark_length_is_thirty_two_invisible_characters() -> None:
    assert len(MARK) == MARK_LEN == 32
    assert all(unicodedata.category(c) == "Mn" for c in MARK)


long_texts = st.lists(st.one_of(st.sampled_from(TRICKY), st.sampled_from(PROSE.split(". ")),
                                st.sampled_from([". ", "。 ", "\n", "\n\n", " "])),
                      min_size=10, max_size=60).map("".join)


@settings(max_examples=60, deadline=None)
@given(long_texts, cut_lists)
def test_fast_paths_decide_exactly_as_the_character_scan(text: str, cuts: list[int]) -> None:
    fast, _ = run_filter(text, split_at(text, cuts))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Scanner, "simple", lambda self: False)
        patch.setattr(Scanner, "span_stop", lambda self: "")
        patch.setattr(Scanner, "plain_ok", lambda self: False)
        slow, _ = run_filter(text)
    assert fast == slow
