"""The static fast path of the embedding classifier: MiniLM's own token table, no forward pass.

A sentence vector here is the L2-normalised mean of all-MiniLM-L6-v2's input token
embeddings (the model's `word_embeddings` table, 30522 x 384) over the text's word-piece
tokens. It costs a tokenizer call and a small gather (tens of microseconds, on the event
loop) where the contextual model costs 15-30 ms of CPU per short prompt on this class of
machine. A separate linear head is trained on these vectors (`head.py`, `fast`), and the
classifier runs the contextual model only when the fast head is unsure (`contextual_band`),
so most requests never wait for the transformer.

Thread-safety: this object has its own tokenizer instance and only reads its table, so the
event loop can call it while the worker thread runs the full model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gateway.pipeline.classify.head import Floats


class StaticEncoder:
    """Mean-of-token-embeddings sentence vectors, (n, dim) float32 unit rows."""

    def __init__(self, tokenizer_file: Path, table: Floats, tokenizers: Any) -> None:
        self._tokenizer = tokenizers.Tokenizer.from_file(str(tokenizer_file))
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self._table = np.ascontiguousarray(table, dtype=np.float32)
        self._unknown = int(self._tokenizer.token_to_id("[UNK]") or 0)
        self.dim = int(self._table.shape[1])

    def ids(self, text: str, max_tokens: int) -> list[int]:
        """Word-piece ids without [CLS]/[SEP]; long text keeps its head and its tail."""
        ids: list[int] = self._tokenizer.encode(text, add_special_tokens=False).ids
        if len(ids) > max_tokens:
            head = max_tokens // 2
            ids = ids[:head] + ids[len(ids) - (max_tokens - head):]
        return ids or [self._unknown]

    def encode(self, texts: Sequence[str], max_tokens: int = 128) -> Floats:
        rows = np.empty((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            vector = self._table[self.ids(text, max_tokens)].mean(axis=0)
            rows[i] = vector / max(float(np.linalg.norm(vector)), 1e-9)
        return rows
