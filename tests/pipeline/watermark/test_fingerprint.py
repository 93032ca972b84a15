"""Normalisation, incremental tokenising, chunking, MinHash similarity."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.pipeline.watermark import fingerprint as fp
from tests.pipeline.watermark.helpers import MARK, PROSE, split_at


def test_normalisation_folds_width_case_marks_and_invisibles() -> None:
    assert fp.words("\uff28\uff45\uff4c\uff4c\uff4f WORLD")  # fullwidth == ["hello", "world"]
    assert fp.words("na\u0308ive cafe\u0301") == fp.words("näive café")
    assert fp.words("in\u200bvisible a\u00adb " + MARK + "x") == ["invisible", "ab", "x"]
    assert fp.words("中文测试 and more") == ["中", "文", "测", "试", "and", "more"]
    assert fp.words("שָׁלוֹם עולם") == ["שלום", "עולם"]


PIECES = ["中文。", " ", "\n", "e\u0301", "\uff21\uff22", "x" * 70, "中" * 70]
chunks_text = st.lists(st.one_of(st.text(max_size=20), st.sampled_from(PIECES)),
                       max_size=20).map("".join)


@settings(max_examples=120, deadline=None)
@given(chunks_text, st.lists(st.integers(1, 400), max_size=20))
def test_incremental_tokenizer_matches_the_whole_text(text: str, cuts: list[int]) -> None:
    tok = fp.Tokenizer()
    hashes: list[int] = []
    for piece in split_at(text, cuts):
        hashes.extend(tok.feed(piece))
    hashes.extend(tok.finish())
    assert hashes == fp.word_hashes(text)


def test_chunk_spans_cover_every_shingle_with_full_chunks() -> None:
    assert fp.chunk_spans(0) == []
    assert fp.chunk_spans(10) == [(0, 10)]
    assert fp.chunk_spans(48) == [(0, 24), (24, 48)]
    assert fp.chunk_spans(50) == [(0, 24), (24, 48), (26, 50)]


def test_similarity_tracks_overlap() -> None:
    hashes = fp.word_hashes(PROSE)
    sigs = fp.record_signatures(hashes)
    stored = [fp.unpack(fp.pack(s)) for s in sigs]
    assert fp.similarity(sigs[0], stored[0]) == 1.0
    rng = random.Random(7)
    other = fp.word_hashes(" ".join(rng.sample(PROSE.split(), 40)))
    assert max(fp.similarity(q, stored[0]) for q in fp.query_signatures(other)) < 0.3
    assert len(fp.band_keys(sigs[0])) == fp.BANDS


def test_sliding_window_signatures_equal_direct_minima() -> None:
    rng = random.Random(3)
    for n in (24, 25, 30, 48, 49, 97, 250):  # up to MAX_WINDOWS windows: stride 1
        hashes = [rng.getrandbits(64) for _ in range(n + 1)]
        rows = [fp._perm_values(s) for s in fp.shingles(hashes)]
        direct = [fp.signature(rows[a:a + fp.CHUNK]) for a in range(len(rows) - fp.CHUNK + 1)]
        assert fp.query_signatures(hashes) == direct


def test_signatures_are_those_stored_ledgers_hold() -> None:
    """The scheme's values, pinned: a ledger written by an earlier build must still match
    (SCHEME names the parameters, not the hash functions' output)."""
    hashes = fp.word_hashes("The quick brown fox jumps over the lazy dog")
    assert fp.pack(fp.record_signatures(hashes)[0]).hex().startswith(
        "83191fa226fa91575dac4a6ae055ef543c4f08143c616f77")
    values = fp._perm_values(0x0123456789ABCDEF)
    assert len(values) == fp.PERMS
    assert values[:4] == (389383955, 1971217790, 855595960, 1193705470)
    assert values[-1] == 653939093


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, (1 << 64) - 1), max_size=120))
def test_record_signatures_are_each_chunks_minima(hashes: list[int]) -> None:
    rows = [fp._perm_values(s) for s in fp.shingles(hashes)]
    expected = [fp.signature(rows[a:b]) for a, b in fp.chunk_spans(len(rows))]
    assert fp.record_signatures(hashes) == expected
