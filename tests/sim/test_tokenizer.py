"""The tokenizer: reversible, stateless, and one token per generated word."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.sim.tokenizer import (
    CHUNK_BASE,
    SPECIALS,
    VOCAB_SIZE,
    WORDS,
    Tokenizer,
    content_text,
    render_chat,
)

TEXTS = ["", "Hello there, world!", "  two  spaces\n\nand a newline\t tab ",
         "café, 日本語, emoji 🙂 and x_y", "digits 1234567890 and 3.14", "<|user|>\nhi<|end|>\n",
         "<|unknown|> markup <b>bold</b>", "don't stop", " leading and trailing "]


@pytest.mark.parametrize("text", TEXTS)
def test_decode_inverts_encode(text: str) -> None:
    tokenizer = Tokenizer()
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert all(0 <= i < VOCAB_SIZE for i in ids)
    assert tokenizer.count(text) == len(ids)


@pytest.mark.parametrize("text", [*TEXTS, "👨‍👩‍👧‍👦 🇯🇵 e\u0301 مرحبا 東京の朝 1️⃣"])
def test_pieces_are_each_token_as_a_streaming_detokenizer_shows_it(text: str) -> None:
    tokenizer = Tokenizer()
    pieces = tokenizer.pieces(text)
    assert "".join(pieces) == text and len(pieces) == tokenizer.count(text)
    # Each piece is the text its token completes: the decoded prefix grows by exactly it.
    ids = tokenizer.encode(text)
    for k in range(len(ids)):
        done = tokenizer.decode(ids[:k + 1]).rstrip("\ufffd")
        assert done == "".join(pieces[:k + 1])


def test_a_four_byte_character_is_two_tokens_the_first_empty() -> None:
    assert Tokenizer().pieces("🙂") == ["", "🙂"]


def test_ids_are_the_same_in_every_instance() -> None:
    text = "Unusual words like zyzzyva stay stable"
    assert Tokenizer().encode(text) == Tokenizer().encode(text)


@pytest.mark.parametrize("piece", [*SPECIALS, " the", "the", " The", " river", ".", " ,", "\n",
                                   " 7"])
def test_vocabulary_pieces_are_one_token(piece: str) -> None:
    ids = Tokenizer().encode(piece)
    assert len(ids) == 1 and ids[0] < CHUNK_BASE


def test_every_word_is_one_token_bare_spaced_and_capitalised() -> None:
    tokenizer = Tokenizer()
    for word in WORDS:
        for piece in (word, " " + word, word.capitalize(), " " + word.capitalize()):
            assert len(tokenizer.encode(piece)) == 1, piece


@pytest.mark.parametrize(("text", "count"), [
    (" zyzzyva", 3),  # 8 bytes: chunks of 3, 3, 2
    ("é", 1),         # 2 bytes, one chunk
    (" 日", 2),       # 4 bytes
])
def test_unknown_pieces_are_spelt_in_byte_chunks(text: str, count: int) -> None:
    ids = Tokenizer().encode(text)
    assert len(ids) == count and all(i >= CHUNK_BASE for i in ids)


def test_decoding_any_id_in_range_needs_no_state() -> None:
    tokenizer = Tokenizer()
    assert tokenizer.decode([CHUNK_BASE + ord("A")]) == "A"
    assert tokenizer.piece_bytes(VOCAB_SIZE - 1) == b"\xff\xff\xff"


@pytest.mark.parametrize("bad", [-1, CHUNK_BASE - 1, VOCAB_SIZE])
def test_ids_outside_the_vocabulary_are_refused(bad: int) -> None:
    with pytest.raises(ValueError, match="out of vocabulary"):
        Tokenizer().decode([bad])


def test_chat_template() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "a"},
                                     {"type": "image_url", "image_url": {}},
                                     {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": None}]
    assert render_chat(messages) == ("<|system|>\nBe brief.<|end|>\n<|user|>\na\nb<|end|>\n"
                                     "<|assistant|>\n<|end|>\n<|assistant|>\n")
    assert render_chat(messages[:1], add_generation_prompt=False) == \
        "<|system|>\nBe brief.<|end|>\n"


@pytest.mark.parametrize(("content", "text"), [("x", "x"), (None, ""), (3, ""),
                                               ([{"text": "a"}, "junk", {"text": 1}], "a")])
def test_content_text(content: object, text: str) -> None:
    assert content_text(content) == text


def test_guard_verdicts_are_one_token_each_after_the_rest() -> None:
    tokenizer = Tokenizer()
    safe, unsafe = tokenizer.encode("safe"), tokenizer.encode("unsafe")
    assert len(safe) == len(unsafe) == 1
    assert safe[0] > max(tokenizer.encode(" " + WORDS[-1].capitalize()))  # ids before: same
    assert tokenizer.pieces("unsafe\nS9,S14") == ["unsafe", "\n", "S", "9", ",", "S", "1",
                                                   "4"]
