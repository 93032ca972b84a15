"""The trained head on top of the sentence embedding: two small models in numpy.

- `harm`: P(harmful | embedding), logistic regression, optionally over one hidden ReLU
  layer (`hidden`: the shipped contextual head has 128 units; on held-out data it ranks
  harmful above benign better than the plain logistic model on the same inputs).
- `category`: P(category | embedding, harmful), a softmax over the harmful categories.

`adapter` (optional): low-rank updates (LoRA) to the encoder's own weights, trained together
with `harm` (`adapt.py`): the frozen encoder's pooled layers leave who does what to whom
mostly unread, and a few hundred thousand weights spread over its attention and
feed-forward layers teach it to read that. The encoder merges them into a copy of its
weights once (embedding.py), so a forward pass costs what it did.

`fast` (optional): the same two models (no hidden layer) trained on the static token-table
vectors (`static.py`), for the cascade: it decides alone when it is sure, the contextual
model decides otherwise.

Score for category c = P(harm) * P(c | harm) / max_k P(k | harm): the most likely category
carries the full harm probability (so its threshold is a threshold on P(harm)), the others
keep their share relative to it. `layers` names the encoder layers whose pooled outputs
make the input vector (embedding.py; a head without it reads the last). Both are trained
by `gateway.pipeline.classify.train`; the weights ship as JSON (`data/head.json`, format
`gateway-head/1`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

FORMAT = "gateway-head/1"
MAX_LAYER = 6  # all-MiniLM-L6-v2 has six
WIDTH = 384  # its hidden size: one pooled layer
LAST_LAYER = (MAX_LAYER,)  # what a head file without `layers` was trained on
Floats = npt.NDArray[np.float32]
FEED_FORWARD = 1536  # its intermediate size
# Linear layers an adapter may update, by their path inside one encoder layer: (in, out).
ADAPTABLE: Mapping[str, tuple[int, int]] = {
    "attention.self.query": (WIDTH, WIDTH), "attention.self.key": (WIDTH, WIDTH),
    "attention.self.value": (WIDTH, WIDTH), "attention.output.dense": (WIDTH, WIDTH),
    "intermediate.dense": (WIDTH, FEED_FORWARD), "output.dense": (FEED_FORWARD, WIDTH)}
_UPDATE_NAME = re.compile(r"encoder\.layer\.(\d+)\.([a-z.]+)")


def default_head_path() -> Path:
    return Path(__file__).resolve().parent / "data" / "head.json"


@dataclass(frozen=True, eq=False)
class Adapter:
    """LoRA updates: the weight W (out, in) of each named linear layer of the encoder
    (`encoder.layer.<i>.<path>`, i from 0) becomes W + scale * B @ A."""

    scale: float
    updates: Mapping[str, tuple[Floats, Floats]]  # name -> (A (rank, in), B (out, rank))

    @functools.cached_property
    def digest(self) -> str:
        """Names the merged weights: the key of their traced forward pass and cached
        vectors (the same updates read from another file share them)."""
        h = hashlib.sha256(repr(self.scale).encode())
        for name in sorted(self.updates):
            a, b = self.updates[name]
            h.update(name.encode() + b"\0" + a.tobytes() + b.tobytes())
        return h.hexdigest()[:16]

    def located(self) -> list[tuple[int, str, Floats, Floats]]:
        """(layer index from 0, path inside it, A, B) per update, in name order."""
        out = []
        for name in sorted(self.updates):
            match = _UPDATE_NAME.fullmatch(name)
            assert match is not None  # checked when parsed
            out.append((int(match[1]), match[2], *self.updates[name]))
        return out

    def to_json(self) -> dict[str, Any]:
        return {"scale": self.scale,
                "updates": {name: {"a": _rounded(a), "b": _rounded(b)}
                            for name, (a, b) in sorted(self.updates.items())}}


def _rounded(a: Floats) -> Any:
    return np.round(a.astype(np.float64), 6).tolist()


@dataclass(frozen=True)
class Head:
    categories: tuple[str, ...]
    harm_w: Floats  # (dim,), or (h,) over the hidden layer
    harm_b: float
    cat_w: Floats  # (k, dim)
    cat_b: Floats  # (k,)
    meta: dict[str, Any]
    fast: Head | None = None  # the same heads over static vectors (static.py)
    layers: tuple[int, ...] = LAST_LAYER  # the encoder layers whose pooled outputs it reads
    hidden_w: Floats | None = None  # (h, dim): harm = logistic(relu(x W' + b) . harm_w)
    hidden_b: Floats | None = None  # (h,)
    adapter: Adapter | None = field(default=None, repr=False)  # the encoder's LoRA updates

    @property
    def dim(self) -> int:
        return int(self.cat_w.shape[1])

    @functools.cached_property
    def _stacked(self) -> tuple[Floats, Floats]:
        """Every weight that multiplies x in one (dim, k + 1 or k + h) matrix and bias: one
        product per row; the categories' logits come first."""
        first = self.harm_w[None, :] if self.hidden_w is None else self.hidden_w
        first_b = np.array([self.harm_b]) if self.hidden_b is None else self.hidden_b
        weights = np.ascontiguousarray(np.vstack([self.cat_w, first]).T)
        bias = np.concatenate([self.cat_b, first_b])
        return weights.astype(np.float32), bias.astype(np.float32)

    def predict(self, x: Floats) -> list[dict[str, float]]:
        """Scores per category for each row of x (n, dim)."""
        weights, bias = self._stacked
        k = len(self.categories)
        out = []
        for row in x:  # row by row: a row's scores do not depend on its batch
            product = row @ weights + bias
            if self.hidden_w is None:
                harm_logit = float(product[k])
            else:
                harm_logit = float(np.maximum(product[k:], 0.0) @ self.harm_w) + self.harm_b
            harm = 0.5 + 0.5 * math.tanh(0.5 * harm_logit)  # the logistic, without overflow
            # P(c | harm) / max_k P(k | harm): the softmax's denominators cancel.
            logits = product[:k].tolist()
            top = max(logits)
            out.append({c: harm * math.exp(v - top)
                        for c, v in zip(self.categories, logits, strict=True)})
        return out

    def to_json(self) -> dict[str, Any]:
        rounded = _rounded  # shared with Adapter.to_json
        return {"format": FORMAT, "categories": list(self.categories),
                "harm": {"w": rounded(self.harm_w), "b": round(self.harm_b, 6)},
                "category": {"w": rounded(self.cat_w), "b": rounded(self.cat_b)},
                "layers": list(self.layers), "meta": self.meta,
                **({"hidden": {"w": rounded(self.hidden_w), "b": rounded(self.hidden_b)}}
                   if self.hidden_w is not None and self.hidden_b is not None else {}),
                **({"adapter": self.adapter.to_json()} if self.adapter is not None else {}),
                **({"fast": self.fast.to_json()} if self.fast is not None else {})}

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), separators=(",", ":")) + "\n")


class HeadError(ValueError):
    """The head file is missing, unreadable or not a gateway head."""


def load_head(path: Path | None = None) -> Head:
    """The head in `path` (default: the shipped one). Read again with the same bytes (a
    policy reload), it is the head parsed before: parsing its 3.3 MB of JSON is one call of
    tens of milliseconds that holds the GIL, so it would stall the event loop even when a
    worker thread makes it."""
    path = path or default_head_path()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise HeadError(f"{path}: cannot read embedding head: {exc}") from None
    return _parse_file(path, data)


@functools.lru_cache(maxsize=4)
def _parse_file(path: Path, data: bytes) -> Head:
    """Shared once cached, so its arrays are made read-only."""
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise HeadError(f"{path}: cannot read embedding head: {exc}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise HeadError(f"{path}: not a {FORMAT} file")
    head = _parse(raw, path)
    if raw.get("fast") is not None:
        fast = _parse(raw["fast"], path)
        if fast.categories != head.categories:
            raise HeadError(f"{path}: the fast head predicts other categories")
        head = replace(head, fast=fast)
    return head


def _parse(raw: Any, path: Path) -> Head:
    try:
        hidden = raw.get("hidden")
        head = Head(
            categories=tuple(raw["categories"]),
            harm_w=np.asarray(raw["harm"]["w"], dtype=np.float32),
            harm_b=float(raw["harm"]["b"]),
            cat_w=np.asarray(raw["category"]["w"], dtype=np.float32),
            cat_b=np.asarray(raw["category"]["b"], dtype=np.float32),
            meta=dict(raw.get("meta") or {}),
            layers=tuple(int(k) for k in raw.get("layers", LAST_LAYER)),
            hidden_w=None if hidden is None else np.asarray(hidden["w"], dtype=np.float32),
            hidden_b=None if hidden is None else np.asarray(hidden["b"], dtype=np.float32))
    except (KeyError, TypeError, ValueError) as exc:
        raise HeadError(f"{path}: malformed embedding head: {exc}") from None
    for weights in (head.harm_w, head.cat_w, head.cat_b, head.hidden_w, head.hidden_b):
        if weights is not None:
            weights.flags.writeable = False
    k = len(head.categories)
    if head.cat_w.ndim != 2 or head.cat_w.shape[0] != k or head.cat_b.shape != (k,):
        raise HeadError(f"{path}: head shapes do not match its {k} categories")
    if head.hidden_w is None:
        harm_inputs = head.dim
    elif (head.hidden_b is None or head.hidden_w.ndim != 2
          or head.hidden_w.shape[1] != head.dim or head.hidden_b.shape != head.hidden_w.shape[:1]):
        raise HeadError(f"{path}: the hidden layer's shapes do not match its inputs")
    else:
        harm_inputs = int(head.hidden_w.shape[0])
    if head.harm_w.shape != (harm_inputs,):
        raise HeadError(f"{path}: the harm weights do not match their inputs")
    if not head.layers or any(not 1 <= layer <= MAX_LAYER for layer in head.layers):
        raise HeadError(f"{path}: layers must be within 1..{MAX_LAYER}")
    if head.dim != WIDTH * len(head.layers):
        raise HeadError(f"{path}: a head over {len(head.layers)} layer(s) needs "
                        f"{WIDTH * len(head.layers)} inputs, not {head.dim}")
    if raw.get("adapter") is not None:
        head = replace(head, adapter=_parse_adapter(raw["adapter"], max(head.layers), path))
    return head


def _parse_adapter(raw: Any, depth: int, path: Path) -> Adapter:
    """Checked against the encoder: every name a linear layer the forward pass runs (the
    deepest layer the head reads, counted from 1), every shape that layer's."""
    try:
        scale = float(raw["scale"])
        updates = {str(name): (np.asarray(u["a"], dtype=np.float32),
                               np.asarray(u["b"], dtype=np.float32))
                   for name, u in raw["updates"].items()}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise HeadError(f"{path}: malformed adapter: {exc}") from None
    if not updates or not math.isfinite(scale):
        raise HeadError(f"{path}: an adapter needs a finite scale and updates")
    for name, (a, b) in updates.items():
        match = _UPDATE_NAME.fullmatch(name)
        if match is None or match[2] not in ADAPTABLE or int(match[1]) >= depth:
            raise HeadError(f"{path}: adapter update {name!r} is not a linear layer of "
                            f"encoder layers 0..{depth - 1}")
        width_in, width_out = ADAPTABLE[match[2]]
        if (a.ndim != 2 or b.ndim != 2 or a.shape[1] != width_in or b.shape[0] != width_out
                or a.shape[0] != b.shape[1]):
            raise HeadError(f"{path}: adapter update {name!r} needs A (rank, {width_in}) "
                            f"and B ({width_out}, rank)")
        a.flags.writeable = b.flags.writeable = False
    return Adapter(scale, updates)
