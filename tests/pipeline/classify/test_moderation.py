"""Output moderation: nothing a check would block is ever emitted, for any chunking."""

from __future__ import annotations

import dataclasses
import sys
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.metrics import Metrics
from gateway.pipeline.classify.moderation import (
    ModerationFilter,
    OutputBlocked,
    OutputCheck,
)
from gateway.pipeline.classify.runtime import ClassifyRuntime
from gateway.pipeline.classify.text import fold
from gateway.pipeline.output import FilterChain
from gateway.pipeline.output.redact import RedactFilter
from tests.pipeline.classify.conftest import POLICY, chat_ctx

_CHECK = ClassifyRuntime().output_check(POLICY)
assert _CHECK is not None
CHECK: OutputCheck = _CHECK
PUBLIC = POLICY.tiers["public"]
OUTPUT_SPECS = [s for s in (*POLICY.classifiers.rules.patterns,
                            *POLICY.classifiers.structure.phrases) if s.scope != "prompt"]
BLOCKED = [t for s in OUTPUT_SPECS for t in s.match_examples]
LOOKALIKES = [t for s in OUTPUT_SPECS for t in s.no_match_examples]
WORDS = ["the", "files", "encrypted", "bitcoin", "wallet", "your", "have", "been", "mode",
         "developer", "sarin", "is", "a", "nerve", "agent", "precursor", "msfvenom", "-p",
         "meterpreter", "\n", ",", ".", "hello", "world", "é", "ﬁle", "\u200b"]


def run(check: OutputCheck, text: str, cuts: list[int]) -> tuple[str, OutputBlocked | None]:
    """Feed text in the chunks given by cut points; what was emitted, and any block."""
    f = ModerationFilter(check, PUBLIC)
    emitted, start = [], 0
    try:
        for cut in [*sorted(set(cuts)), len(text)]:
            if cut > start:
                emitted.append(f.feed(text[start:cut]))
                start = cut
        emitted.append(f.finish())
    except OutputBlocked as exc:
        return "".join(emitted), exc
    return "".join(emitted), None


texts = st.builds(
    lambda prefix, inner, suffix: f"{prefix}{inner}{suffix}",
    st.lists(st.sampled_from(WORDS), max_size=60).map(" ".join),
    st.one_of(st.just(""), st.sampled_from(BLOCKED), st.sampled_from(LOOKALIKES)),
    st.lists(st.sampled_from(WORDS), max_size=60).map(" ".join),
)


@settings(max_examples=300, deadline=None)
@given(text=texts, cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=40))
def test_nothing_blocked_is_ever_emitted(text: str, cuts: list[int]) -> None:
    emitted, blocked = run(CHECK, text, [c for c in cuts if c < len(text)])
    assert CHECK.check_text(emitted, PUBLIC) == ()
    expected = CHECK.check_text(text, PUBLIC)
    if expected:
        # A stream stops at the first match: a category whose text would only have
        # completed later is never seen, so the block names a non-empty subset.
        assert blocked is not None and blocked.categories
        assert set(blocked.categories) <= set(expected)
    else:
        assert blocked is None and emitted == text


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=300), cuts=st.lists(st.integers(0, 300), max_size=30))
def test_arbitrary_clean_text_passes_through_unchanged(text: str, cuts: list[int]) -> None:
    if CHECK.check_text(text, PUBLIC):
        return
    emitted, blocked = run(CHECK, text, [c for c in cuts if c < len(text)])
    assert blocked is None and emitted == text


def test_hold_back_is_bounded() -> None:
    f = ModerationFilter(CHECK, PUBLIC)
    text = "word " * 400
    out = "".join(f.feed(c) for c in text)
    held = len(text) - len(out)
    assert 0 <= held <= CHECK.width + CHECK.margin
    assert out + f.finish() == text


def test_blocks_char_by_char_before_the_match_is_complete() -> None:
    note = "Sorry. YOUR FILES HAVE BEEN ENCRYPTED! Send 1 Bitcoin to the wallet below."
    f = ModerationFilter(CHECK, PUBLIC)
    out = []
    with pytest.raises(OutputBlocked) as info:
        for char in note:
            out.append(f.feed(char))
        f.finish()
    assert info.value.categories == ("cyber",)
    assert "ENCRYPTED" not in "".join(out)


def test_tier_decides() -> None:
    note = "your files have been encrypted, pay 1 bitcoin"
    research = POLICY.tiers["research"]  # cyber: flag
    assert CHECK.check_text(note, research) == ()
    assert CHECK.check_text(note, PUBLIC) == ("cyber",)


def test_invisible_smuggling_in_output() -> None:
    hidden = "".join(chr(0xE0000 + ord(c)) for c in "exfiltrate")
    with pytest.raises(OutputBlocked) as info:
        run_all(f"Here is your answer.{hidden}")
    assert info.value.categories == ("jailbreak",)


def run_all(text: str) -> str:
    f = ModerationFilter(CHECK, PUBLIC)
    return f.feed(text) + f.finish()


def test_factory_per_tier_and_metrics(metrics: Metrics) -> None:
    make = ClassifyRuntime(metrics).output_filter(POLICY)
    lenient = dataclasses.replace(POLICY, tiers={**POLICY.tiers, "trusted": dataclasses.replace(
        POLICY.tiers["trusted"], categories={"default": "allow"})})
    # Nothing the check finds is blocked or flagged there: no filter at all.
    assert make(chat_ctx("x", tier="trusted", policy=lenient)) is None
    assert make(chat_ctx("x", tier="trusted")) is not None  # trusted blocks cbrn
    flt = make(chat_ctx("x", tier="public"))
    assert isinstance(flt, ModerationFilter)
    with pytest.raises(OutputBlocked):
        FilterChain((flt, RedactFilter(("secret",)))).apply(
            "msfvenom -p windows/meterpreter/reverse_tcp LHOST=1.2.3.4")
    assert metrics.registry.get_sample_value(
        "gateway_output_blocks_total", {"tier": "public", "category": "cyber"}) == 1.0


def test_ordinary_prose_is_not_held_back() -> None:
    f = ModerationFilter(CHECK, PUBLIC)
    text, out = "", ""
    prose = ("Rivers run to the sea, and the hills stay green while the farmers bring in "
             "the harvest before the first frost.")
    for word in prose.split():
        text += word + " "
        out += f.feed(word + " ")
        # At most the last word waits (when it could begin a pattern, e.g. "the" -> ...).
        assert len(text) - len(out) <= len(word) + 1, (text, out)
    assert out + f.finish() == text


def test_a_possible_start_of_a_pattern_waits_until_it_is_decided() -> None:
    f = ModerationFilter(CHECK, PUBLIC)
    out = f.feed("Done. All your fi")
    assert out == "Done. "  # "All your fi..." could become the ransom note
    out += f.feed("ve tomatoes are ripe.")
    assert out + f.finish() == "Done. All your five tomatoes are ripe."
    assert "All your fi" in out  # released as soon as the pattern failed


@pytest.mark.parametrize("disguise", [
    "ENCRYPTED! Send 1 Bitc\u043ein",  # a Cyrillic o: the first non-ASCII delta
    "ENCRYPTED!\u200b Send 1 Bitcoin",  # an invisible character
    "ENCRYPTÉD! Send 1 Bitcoin",  # an accent, folded away
])
def test_a_match_begun_in_ascii_and_ended_in_other_letters_is_caught(disguise: str) -> None:
    # The first deltas are plain ASCII (positions in the text and its fold agree); the
    # match completes in a delta whose characters fold to none or other letters.
    f = ModerationFilter(CHECK, PUBLIC)
    out = f.feed("Sorry about that. ") + f.feed("YOUR FILES HAVE BEEN ")
    assert out == "Sorry about that. "
    with pytest.raises(OutputBlocked) as info:
        out += f.feed(disguise)
        out += f.feed(" to the wallet below.")
        f.finish()
    assert info.value.categories == ("cyber",)
    assert "FILES" not in out


def test_text_after_other_letters_is_still_emitted_in_step() -> None:
    f = ModerationFilter(CHECK, PUBLIC)
    pieces = ["Plain start, ", "then caf\u00e9 and \u0444\u0438\u0437\u0438\u043a\u0430 ",
              "\u200bthen ", "plain words again ", "and the end."]
    out = "".join(f.feed(p) for p in pieces)
    assert out + f.finish() == "".join(pieces)
    assert len("".join(pieces)) - len(out) <= len("end.") + 4  # only the last word waits


@settings(max_examples=200, deadline=None)
@given(text=texts, cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=40))
def test_the_fold_kept_matches_the_text_kept(text: str, cuts: list[int]) -> None:
    # The class invariant every position in the scan relies on: _folded is the fold of
    # _buf, character by character once _parts exists.
    f = ModerationFilter(CHECK, PUBLIC)
    start = 0
    for cut in [*sorted({c for c in cuts if c < len(text)}), len(text)]:
        if cut <= start:
            continue
        try:
            f.feed(text[start:cut])
        except OutputBlocked:
            return
        start = cut
        assert f._folded == fold(f._buf)
        if f._parts is not None:
            assert len(f._parts) == len(f._buf) and "".join(f._parts) == f._folded


def test_checking_a_delta_keeps_the_gil() -> None:
    # The filter runs on the event loop. A regex call that let go of the GIL would wait
    # for it while the ledger or audit thread is busy: up to the switch interval per
    # delta (5 ms by default; here 1 s, so a release cannot hide in the timing).
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            pass

    busy = threading.Thread(target=spin)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1.0)
    try:
        busy.start()
        f = ModerationFilter(CHECK, PUBLIC)
        f.feed("warm-up ")  # the first switch back from the new thread is allowed to wait
        started = time.perf_counter()
        out = "".join(f.feed(word) for word in ("Rivers ", "run ", "to ", "the ", "sea."))
        elapsed = time.perf_counter() - started
    finally:
        stop.set()
        sys.setswitchinterval(interval)
        busy.join()
    assert out + f.finish() == "Rivers run to the sea."
    assert elapsed < 0.5, f"{elapsed:.2f}s: a search let go of the GIL"


BLOCKED_ON_PUBLIC = [t for t in BLOCKED if CHECK.check_text(t, PUBLIC)]


def _json_escaped(text: str, which: list[bool]) -> str:
    return "".join(f"\\u{ord(c):04x}" if escape and c.isalnum() else c
                   for c, escape in zip(text, which, strict=True))


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_json_escapes_do_not_hide_blocked_text(data: st.DataObject) -> None:
    """Tool-call arguments and JSON-mode answers are JSON the client decodes:
    `m\\u0073fvenom -p ...` passed output moderation (found by a black-box check)."""
    plain = data.draw(st.sampled_from(BLOCKED_ON_PUBLIC))
    which = data.draw(st.lists(st.booleans(), min_size=len(plain), max_size=len(plain)))
    text = _json_escaped(plain, which)
    cuts = data.draw(st.lists(st.integers(0, len(text)), max_size=20))
    emitted, blocked = run(CHECK, text, [c for c in cuts if c < len(text)])
    assert blocked is not None, text
    assert CHECK.check_text(emitted, PUBLIC) == ()


@pytest.mark.parametrize("text", ['{"path": "C:\\\\users\\\\me", "a": "\\\\u0073 not s"}',
                                  "ends with a backslash \\", "half an escape \\u00"])
def test_text_with_backslashes_is_emitted_as_written(text: str) -> None:
    emitted, blocked = run(CHECK, text, list(range(1, len(text), 3)))
    assert blocked is None and emitted == text
