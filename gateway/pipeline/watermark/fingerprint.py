"""Text fingerprints for the provenance ledger: MinHash over word shingles, LSH bands.

Normalisation: NFKC, casefold, then every nonspacing/enclosing mark and format character
is dropped (our own marks, ZWJ/ZWSP stuffing, bidi controls, diacritics that NFKC left
apart); words are runs of letters and digits, and each CJK ideograph or kana is a word
of its own (no spaces to split on).

Shingles are word bigrams. A response is cut into chunks of CHUNK shingles (about 25
words, non-overlapping, the tail covered by one last full-size chunk), and each chunk
gets a MinHash signature of PERMS values. An excerpt of 50 words always covers at least
one whole chunk; at query time the excerpt is slid as CHUNK-shingle windows (stride 1
for short text), so one window lines up with that chunk and their Jaccard similarity is
high (≈1 verbatim, ≈0.4 with a fifth of the words substituted or deleted).

LSH: the first BANDS*ROWS values form BANDS=8 bands of ROWS=2, stored as (band, hash)
rows; two chunks become candidates when any band is identical, probability
1-(1-J²)^BANDS per window (0.83 at J=0.45, and a 50-word excerpt has a dozen windows
near the chunk it covers; 0.005 at J=0.025). Candidates are then scored on the whole
64-value signature (J ≈ equal values / PERMS, standard error ≤ 0.0625).

Extension point: an embedding fingerprint (paraphrase-robust) would be a second
`Fingerprinter`-like producer whose vectors the store indexes beside the bands; the
ledger's storage interface keeps records, signatures and band keys apart for that.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import operator
import re
import struct
import sys
import unicodedata
from array import array
from collections.abc import Iterable, Sequence

import numpy as np

SHINGLE = 2
CHUNK = 24
PERMS = 64
ROWS = 2
BANDS = 8
MAX_CHUNKS = 1024  # per record (about 25,000 words); a longer tail is not fingerprinted
MAX_WINDOWS = 256  # per query
# Stored with every ledger: signatures made under other parameters are not comparable.
SCHEME = f"minhash-v1/shingle={SHINGLE}/chunk={CHUNK}/perms={PERMS}/bands={BANDS}x{ROWS}"
_MASK64 = (1 << 64) - 1
_SIG16 = 0xFFFF

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f"
_TOKEN = re.compile(f"[{_CJK}]|[^\\W_{_CJK}]+")
_CJK_CHAR = re.compile(f"[{_CJK}]")
_WHITESPACE = re.compile(r"\s")
_TAIL_LIMIT = 4096


@functools.cache
def _drop_table() -> dict[int, None]:
    """Code points removed before tokenising: categories Mn, Me, Cf (built on first use)."""
    table: dict[int, None] = {}
    for cp in (*range(0xA0, 0x20000), *range(0xE0000, 0xE01F0)):
        if unicodedata.category(chr(cp)) in ("Mn", "Me", "Cf"):
            table[cp] = None
    return table


def normalise(text: str) -> str:
    if text.isascii():  # the common case, and NFKC/casefold/marks are no-ops on it
        return text.lower()
    return unicodedata.normalize("NFKC", text).casefold().translate(_drop_table())


def words(text: str) -> list[str]:
    return _TOKEN.findall(normalise(text))


@functools.lru_cache(maxsize=1 << 16)
def word_hash(word: str) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")


def word_hashes(text: str) -> list[int]:
    return [word_hash(w) for w in words(text)]


class Tokenizer:
    """Incremental `word_hashes`: the same hashes whatever the chunking of the text.

    Text is cut only where normalisation and word splitting cannot see across the cut
    (whitespace, or before a CJK character), so pieces tokenise as the whole would.
    """

    __slots__ = ("_tail",)

    def __init__(self) -> None:
        self._tail = ""

    def feed(self, delta: str) -> list[int]:
        buf = self._tail + delta
        cut = _safe_cut(buf)
        self._tail = buf[cut:]
        return word_hashes(buf[:cut]) if cut else []

    def finish(self) -> list[int]:
        tail, self._tail = self._tail, ""
        return word_hashes(tail)


def _safe_cut(buf: str) -> int:
    cut = max(buf.rfind(" "), buf.rfind("\n"), buf.rfind("\t")) + 1
    if cut or len(buf) < 64:
        return cut
    last_cjk = None
    for m in _CJK_CHAR.finditer(buf, max(0, len(buf) - 64)):
        last_cjk = m.start()
    if last_cjk:
        return last_cjk
    return len(buf) if len(buf) > _TAIL_LIMIT else 0


def shingles(hashes: Sequence[int]) -> list[int]:
    """Word-bigram shingle ids (a lone word is its own shingle)."""
    if len(hashes) < SHINGLE:
        return list(hashes)
    return [((a * 0x9E3779B97F4A7C15) ^ b) & _MASK64 for a, b in itertools.pairwise(hashes)]


_PERSONS = tuple(b"gw-minhash-%d" % i for i in range(8))
# The PERMS values are four 64-byte blake2b digests, each under its own person, read as
# 32-bit words. Each shingle copies a state set up once: setting up a person costs as
# much as hashing the 8 bytes (5.0-6.1 -> 2.8-3.0 us a shingle, the same values).
_S0, _S1, _S2, _S3 = (hashlib.blake2b(digest_size=64, person=p) for p in _PERSONS[:4])
_PERM_WORDS = struct.Struct(f"<{PERMS}I")
assert _PERM_WORDS.size == 4 * _S0.digest_size, "PERMS is four digests of 32-bit words"


def _digests(shingle: int) -> bytes:
    """The shingle's PERMS values as little-endian 32-bit words."""
    data = shingle.to_bytes(8, "little")
    h0, h1, h2, h3 = _S0.copy(), _S1.copy(), _S2.copy(), _S3.copy()
    h0.update(data)
    h1.update(data)
    h2.update(data)
    h3.update(data)
    return h0.digest() + h1.digest() + h2.digest() + h3.digest()


def _perm_values(shingle: int) -> tuple[int, ...]:
    """The shingle's value under each of the PERMS hash functions (32-bit)."""
    values: tuple[int, ...] = _PERM_WORDS.unpack(_digests(shingle))
    return values


def signature(rows: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
    """MinHash signature of a set, given each element's per-permutation values."""
    return tuple(map(min, zip(*rows, strict=True)))


_MASK48 = (1 << 48) - 1


def band_keys(sig: Sequence[int]) -> list[tuple[int, int]]:
    """(band, hash) per band: the band's ROWS=2 values folded into 48 bits."""
    return [(band, ((sig[band * ROWS] << 16) ^ sig[band * ROWS + 1]) & _MASK48)
            for band in range(BANDS)]


def pack(sig: Sequence[int]) -> bytes:
    """Stored form: the low 16 bits of each value (b-bit MinHash; bias 1/65536)."""
    packed = array("H", (v & _SIG16 for v in sig))
    if sys.byteorder != "little":
        packed.byteswap()
    return packed.tobytes()


def unpack(blob: bytes) -> array[int]:
    packed = array("H")
    packed.frombytes(blob)
    if sys.byteorder != "little":
        packed.byteswap()
    return packed


def truncate(sig: Sequence[int]) -> array[int]:
    """A query signature in the stored (16-bit) form, for repeated comparisons."""
    return array("H", (v & _SIG16 for v in sig))


def similarity(query: Sequence[int], stored: Sequence[int]) -> float:
    """Estimated Jaccard similarity: the share of equal (16-bit) signature values.
    `query` may be a full signature or already `truncate`d."""
    if not isinstance(query, array):
        query = truncate(query)
    same: int = sum(map(operator.eq, query, stored))
    return same / PERMS


def _rows(shingle_ids: Iterable[int]) -> list[tuple[int, ...]]:
    cache: dict[int, tuple[int, ...]] = {}
    out = []
    for s in shingle_ids:
        row = cache.get(s)
        if row is None:
            row = cache[s] = _perm_values(s)
        out.append(row)
    return out


def chunk_spans(n: int) -> list[tuple[int, int]]:
    """Stored chunks over n shingles: non-overlapping CHUNK runs, the tail a full chunk."""
    if n == 0:
        return []
    if n <= CHUNK:
        return [(0, n)]
    spans = [(i, i + CHUNK) for i in range(0, n - CHUNK + 1, CHUNK)]
    if spans[-1][1] < n:
        spans.append((n - CHUNK, n))
    return spans[:MAX_CHUNKS]


def record_signatures(hashes: Sequence[int]) -> list[tuple[int, ...]]:
    """The signatures a ledger record stores, one per chunk: `signature` of each chunk's
    `_perm_values`, computed on one array of them (a third of the time for a 1,000-word
    answer: no Python int per value) and only for shingles a stored chunk covers."""
    ids = shingles(hashes)
    spans = chunk_spans(len(ids))
    if not spans:
        return []
    covered = ids[:max(b for _, b in spans)]
    values = np.frombuffer(b"".join(map(_digests, covered)), dtype="<u4")
    rows = values.reshape(len(covered), PERMS)
    return [tuple(rows[a:b].min(axis=0).tolist()) for a, b in spans]


def query_signatures(hashes: Sequence[int]) -> list[tuple[int, ...]]:
    """Signatures of CHUNK-shingle windows slid over a query (at most MAX_WINDOWS)."""
    rows = _rows(shingles(hashes))
    n = len(rows)
    if n == 0:
        return []
    if n <= CHUNK:
        return [signature(rows)]
    stride = max(1, (n - CHUNK) // MAX_WINDOWS + 1)
    starts = list(range(0, n - CHUNK + 1, stride))
    if starts[-1] != n - CHUNK:
        starts.append(n - CHUNK)
    if stride > 1:
        return [signature(rows[a:a + CHUNK]) for a in starts]
    return _sliding_minima(rows, starts)


def _sliding_minima(rows: list[tuple[int, ...]], starts: list[int]) -> list[tuple[int, ...]]:
    """Every CHUNK-wide window's signature in O(n) (van Herk / Gil-Werman): minima of
    each block of CHUNK rows from its start (g) and from its end (h); the window that
    starts at i is min(h[i], g[i + CHUNK - 1])."""
    n = len(rows)
    g: list[tuple[int, ...]] = list(rows)
    h: list[tuple[int, ...]] = list(rows)
    for i in range(1, n):
        if i % CHUNK:
            g[i] = tuple(map(min, g[i - 1], rows[i]))
    for i in range(n - 2, -1, -1):
        if (i + 1) % CHUNK and i + 1 < n:
            h[i] = tuple(map(min, h[i + 1], rows[i]))
    return [tuple(map(min, h[a], g[a + CHUNK - 1])) for a in starts]
