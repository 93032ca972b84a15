"""What the simulated model says, and when it stops."""

from __future__ import annotations

import hashlib
import random

import pytest

from gateway.sim.generate import EOS, Limits, plan
from gateway.sim.prose import FEATURES, Prose, compose
from gateway.sim.tokenizer import WORDS, Tokenizer

FREE = Limits(max_tokens=10_000)


def test_same_prompt_seed_and_index_give_the_same_answer() -> None:
    assert plan("p", 1, 0, FREE) == plan("p", 1, 0, FREE)
    answers = {plan(p, s, i, FREE).text for p, s, i in
               [("p", 1, 0), ("q", 1, 0), ("p", 2, 0), ("p", 1, 1)]}
    assert len(answers) == 4


@pytest.mark.parametrize("prompt", [f"prompt {i}" for i in range(40)])
def test_natural_end_is_an_eos_after_a_sentence(prompt: str) -> None:
    answer = plan(prompt, 0, 0, FREE)
    assert answer.finish_reason == "stop" and answer.stop_reason is None
    assert 17 <= answer.tokens <= 64
    assert answer.pieces[-1] == EOS and answer.pieces[-2] == "."
    words = [p for p in answer.pieces if p not in (".", EOS)]
    assert all(p.startswith(" ") and p[1:].lower() in WORDS for p in words)
    assert answer.pieces[0][1].isupper()
    # Every piece with text is one token: the text tokenizes back to the count, less EOS.
    assert Tokenizer().count(answer.text) == answer.tokens - 1


def test_max_tokens_cuts_with_length() -> None:
    answer = plan("p", 0, 0, Limits(max_tokens=5))
    assert (answer.tokens, answer.finish_reason) == (5, "length")
    assert answer.pieces == plan("p", 0, 0, FREE).pieces[:5]


def test_ignore_eos_and_min_tokens_keep_it_talking() -> None:
    assert plan("p", 0, 0, Limits(max_tokens=500, ignore_eos=True)).tokens == 500
    natural = plan("p", 0, 0, FREE).tokens
    longer = plan("p", 0, 0, Limits(max_tokens=10_000, min_tokens=natural + 5))
    assert longer.tokens > natural + 5 and longer.finish_reason == "stop"


def test_eos_needs_room_under_max_tokens() -> None:
    natural = plan("p", 0, 0, FREE)
    cut = plan("p", 0, 0, Limits(max_tokens=natural.tokens - 1))
    assert cut.finish_reason == "length" and cut.text == natural.text


def _stops(stop: tuple[str, ...], include: bool = False) -> Limits:
    return Limits(max_tokens=40, ignore_eos=True, stop=stop, include_stop=include)


def test_stop_string_ends_the_text_before_it() -> None:
    full = plan("p", 0, 0, _stops(())).text
    stop = full[20:27]  # straddles token boundaries
    answer = plan("p", 0, 0, _stops((stop,)))
    at = full.index(stop)
    assert (answer.finish_reason, answer.stop_reason) == ("stop", stop)
    assert answer.text == full[:at]
    # The token that completed the stop string is the last one generated.
    ends = [len("".join(plan("p", 0, 0, _stops(())).pieces[:k + 1])) for k in range(40)]
    assert answer.tokens == next(k for k, end in enumerate(ends) if end >= at + len(stop)) + 1
    assert plan("p", 0, 0, _stops((stop,), include=True)).text == full[:at + len(stop)]


def test_earliest_of_several_stop_strings_wins() -> None:
    full = plan("p", 0, 0, _stops(())).text
    late, early = full[30:36], full[10:16]
    answer = plan("p", 0, 0, _stops((late, early)))
    assert answer.stop_reason == early and answer.text == full[:full.index(early)]


def test_stop_string_never_said_changes_nothing() -> None:
    assert plan("p", 0, 0, _stops(("§",))).text == plan("p", 0, 0, _stops(())).text


PROSE = Prose(FEATURES, Tokenizer())


@pytest.mark.parametrize("prompt", [f"prompt {i}" for i in range(10)])
def test_prose_ends_after_a_whole_answer_spelt_in_tokens(prompt: str) -> None:
    answer = plan(prompt, 0, 0, FREE, PROSE)
    assert answer.finish_reason == "stop" and answer.pieces[-1] == EOS
    assert answer.text == compose(_rng(prompt, 0, 0))  # the same source, one answer
    assert Tokenizer().count(answer.text) == answer.tokens - 1
    assert plan(prompt, 0, 0, FREE, PROSE) == answer != plan(prompt, 1, 0, FREE, PROSE)


def test_prose_obeys_max_tokens_ignore_eos_min_tokens_and_stop() -> None:
    natural = plan("p", 0, 0, FREE, PROSE)
    cut = plan("p", 0, 0, Limits(max_tokens=7), PROSE)
    assert cut.finish_reason == "length" and cut.pieces == natural.pieces[:7]
    long = plan("p", 0, 0, Limits(max_tokens=3000, ignore_eos=True), PROSE)
    assert long.tokens == 3000 and long.text.startswith(natural.text + "\n\n")
    assert Tokenizer().count(long.text) == 3000
    more = plan("p", 0, 0, Limits(max_tokens=10_000, min_tokens=natural.tokens), PROSE)
    assert more.finish_reason == "stop" and more.tokens > natural.tokens
    assert more.text.startswith(natural.text + "\n\n")
    stop = natural.text[40:46]
    stopped = plan("p", 0, 0, Limits(max_tokens=10_000, stop=(stop,)), PROSE)
    assert stopped.stop_reason == stop and stopped.text == natural.text[:natural.text.index(stop)]


def _rng(prompt: str, seed: int, index: int) -> random.Random:
    digest = hashlib.blake2b(f"{seed}\0{index}\0{prompt}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


def test_a_guard_says_its_verdict_then_ends() -> None:
    said = ("unsafe", "\n", "S", "9")
    answer = plan("p", 0, 0, FREE, said=said)
    assert answer.pieces == (*said, EOS) and answer.finish_reason == "stop"
    assert plan("p", 0, 0, Limits(max_tokens=2), said=said).pieces == said[:2]
    # Made to go on, it goes on in sentences, and ends after one.
    longer = plan("p", 0, 0, Limits(max_tokens=100, min_tokens=6), said=said)
    assert longer.pieces[:4] == said and longer.pieces[-2:] == (".", EOS)
    assert plan("p", 0, 0, Limits(max_tokens=9, ignore_eos=True), said=said).tokens == 9


def test_raw_keeps_the_text_a_stop_string_hid() -> None:
    answer = plan("p", 0, 0, Limits(max_tokens=100, stop=("\nS",)),
                  said=("unsafe", "\n", "S", "9"))
    assert answer.pieces == ("unsafe", "", "") and answer.stop_reason == "\nS"
    assert answer.token_texts == ("unsafe", "\n", "S")
    plain = plan("p", 0, 0, FREE)
    assert plain.raw == () and plain.token_texts == plain.pieces
