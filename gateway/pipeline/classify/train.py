"""Fit the embedding head: `python -m gateway.pipeline.classify.train [--out FILE]`.

Reads `data/examples.txt` (written for this project, see data/DATA.md), embeds every
example with the same Encoder the gateway runs, holds out a fixed ~20% split (by a hash
of the text, so the split never changes when examples are added elsewhere), fits

- `harm`: harmful vs benign (classes balanced): by default one hidden ReLU layer trained
  together with low-rank updates to the encoder (`adapt.py`, `--adapter-rank`), which the
  head file carries; L2-regularised logistic regression over the frozen encoder with
  `--hidden 0`;
- `category`: L2-regularised softmax regression over the harmful categories, on the
  vectors the encoder reads with those updates,

and the same two heads again on the static token-table vectors (`static.py`) as the
cascade's fast head; reports the held-out numbers (model, static head, and the cascade with
the default band), then refits on everything and writes the head JSON (about 8 minutes on
two cores: the encoder is fine-tuned twice). Needs the `ml` extra. Seeded throughout:
same examples and `--threads`, same head.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from gateway.pipeline.classify.adapt import Tuned, fine_tune
from gateway.pipeline.classify.embedding import MODEL_NAME, Encoder
from gateway.pipeline.classify.head import (
    LAST_LAYER,
    MAX_LAYER,
    Floats,
    Head,
    default_head_path,
)
from gateway.policy.spec import EmbeddingSpec

DATA = Path(__file__).resolve().parent / "data"
# The project's shared DEV set, when the checkout sits beside it (see data/DATA.md).
DEV_DEFAULT = Path(__file__).resolve().parents[4] / "shared" / "datasets" / "classify_dev.jsonl"
BENIGN = "benign"
UNKNOWN = "harmful"  # harmful, category unknown: trains the harm head only
MAX_TOKENS = 128


@dataclass(frozen=True)
class Example:
    text: str
    category: str  # a harmful category, or "benign"
    near: str | None  # for hard negatives: the category they imitate
    source: str = "examples.txt"

    @property
    def harmful(self) -> bool:
        return self.category != BENIGN

    @property
    def heldout(self) -> bool:
        return hashlib.sha256(self.text.encode()).digest()[0] % 5 == 0


def read_examples(path: Path) -> list[Example]:
    examples: list[Example] = []
    category, near = None, None
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if line.startswith("## "):
            parts = line[3:].split()
            category = parts[0]
            near = parts[1].split("=", 1)[1] if len(parts) > 1 else None
            continue
        if not line or line.startswith("#"):
            continue
        if category is None:
            raise ValueError(f"{path}:{n}: example before any ## section")
        examples.append(Example(line, category, near, path.name))
    return examples


# Rows whose licence allows training a shipped model: AdvBench and JailbreakBench (MIT).
# Alpaca (CC BY-NC) is never trained on; it is evaluation data only.
TRAINABLE_SOURCES = ("advbench", "jailbreakbench")


def in_train_half(text: str) -> bool:
    """The fixed half of the DEV set that may be trained on (the other half is evaluated)."""
    return hashlib.sha256(b"dev-split\0" + text.encode()).digest()[0] % 2 == 0


def read_dev(path: Path) -> list[Example]:
    """The DEV rows from trainable sources in the train half; harm labels only."""
    rows = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        raw = json.loads(line)
        if raw.get("source") in TRAINABLE_SOURCES and in_train_half(raw["text"]):
            category = BENIGN if raw["label"] == "benign" else UNKNOWN
            rows.append(Example(raw["text"], category, None, f"dev:{raw['source']}"))
    return rows


def fit_binary(x: Floats, y: Floats, l2: float, steps: int = 30) -> tuple[Floats, float]:
    """Newton's method on the balanced, L2-regularised logistic loss (bias unpenalised)."""
    n, d = x.shape
    pos = max(1.0, float(y.sum()))
    neg = max(1.0, float(n - y.sum()))
    weight = np.where(y > 0, n / (2 * pos), n / (2 * neg))
    xb = np.hstack([x, np.ones((n, 1))])
    w = np.zeros(d + 1)
    reg = np.full(d + 1, l2)
    reg[-1] = 0.0
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(xb @ w)))
        grad = xb.T @ (weight * (p - y)) / n + reg * w
        hess = (xb * (weight * p * (1 - p))[:, None]).T @ xb / n + np.diag(reg + 1e-9)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-6:
            break
    return w[:d].astype(np.float32), float(w[d])


def fit_softmax(x: Floats, labels: list[int], k: int, l2: float,
                steps: int = 1500, lr: float = 2.0) -> tuple[Floats, Floats]:
    """Gradient descent on the L2-regularised softmax loss, classes balanced."""
    n, d = x.shape
    y = np.zeros((n, k))
    y[np.arange(n), labels] = 1.0
    counts = y.sum(axis=0)
    sample_w = (n / (k * np.maximum(counts, 1.0)))[labels]
    w = np.zeros((k, d))
    b = np.zeros(k)
    for _ in range(steps):
        z = x @ w.T + b
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        err = (p - y) * sample_w[:, None] / n
        w -= lr * (err.T @ x + l2 * w)
        b -= lr * err.sum(axis=0)
    return w.astype(np.float32), b.astype(np.float32)


def fit_hidden(x: Floats, y: Floats, hidden: int, weight_decay: float = 1e-2,
               dropout: float = 0.5, epochs: int = 400) -> tuple[Floats, Floats, Floats, float]:
    """One hidden ReLU layer under the logistic harm model, classes balanced: AdamW on the
    whole batch, dropout on the inputs and the hidden units. Seeded, on one thread, so the
    same examples give the same head. Returns hidden w (h, d), b (h,), harm w (h,), b."""
    torch: Any = importlib.import_module("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        inputs = torch.tensor(x, dtype=torch.float32)
        target = torch.tensor(y, dtype=torch.float32)
        n, pos = len(target), float(target.sum())
        weight = torch.where(target > 0, n / (2 * max(pos, 1.0)), n / (2 * max(n - pos, 1.0)))
        nn = torch.nn
        first, last = nn.Linear(x.shape[1], hidden), nn.Linear(hidden, 1)
        model = nn.Sequential(nn.Dropout(dropout), first, nn.ReLU(), nn.Dropout(dropout), last)
        optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=weight_decay)
        model.train()
        for _ in range(epochs):
            optimiser.zero_grad()
            loss = (nn.functional.binary_cross_entropy_with_logits(
                model(inputs).squeeze(1), target, reduction="none") * weight).mean()
            loss.backward()
            optimiser.step()
        return (first.weight.detach().numpy().copy(), first.bias.detach().numpy().copy(),
                last.weight.detach().numpy()[0].copy(), float(last.bias.item()))
    finally:
        torch.set_num_threads(threads)


def fit(examples: list[Example], vectors: Floats, l2_harm: float, l2_cat: float,
        meta: dict[str, Any], operating_point: float = 0.5, hidden: int = 0,
        tuned: Tuned | None = None) -> Head:
    """Fit both heads (the harm model is `tuned`'s when the encoder was fine-tuned with
    it, and `vectors` read through its adapter); the harm bias is shifted so that a fitted
    P(harm) equal to `operating_point` comes out as 0.5 (the categories' default
    threshold)."""
    y = np.array([1.0 if e.harmful else 0.0 for e in examples])
    hidden_w = hidden_b = None
    if tuned is not None:
        hidden_w, hidden_b, harm_w, harm_b = (tuned.hidden_w, tuned.hidden_b, tuned.harm_w,
                                              tuned.harm_b)
    elif hidden:
        hidden_w, hidden_b, harm_w, harm_b = fit_hidden(vectors, y, hidden)
    else:
        harm_w, harm_b = fit_binary(vectors, y, l2_harm)
    harm_b -= float(np.log(operating_point / (1.0 - operating_point)))
    categories = tuple(sorted({e.category for e in examples
                               if e.harmful and e.category != UNKNOWN}))
    index = {c: i for i, c in enumerate(categories)}
    harmful = [i for i, e in enumerate(examples) if e.harmful and e.category != UNKNOWN]
    cat_w, cat_b = fit_softmax(vectors[harmful], [index[examples[i].category] for i in harmful],
                               len(categories), l2_cat)
    return Head(categories, harm_w, harm_b, cat_w, cat_b, meta,
                hidden_w=hidden_w, hidden_b=hidden_b,
                adapter=tuned.adapter if tuned is not None else None)


def report(head: Head, examples: list[Example], vectors: Floats,
           threshold: float = 0.5) -> dict[str, Any]:
    scores = head.predict(vectors)
    tp = fp = fn = tn = 0
    right_category = 0
    for e, s in zip(examples, scores, strict=True):
        top = max(s, key=lambda c: s[c])
        flagged = s[top] >= threshold
        if e.harmful:
            tp += flagged
            fn += not flagged
            right_category += top == e.category or e.category == UNKNOWN
        else:
            fp += flagged
            tn += not flagged
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"n": len(examples), "precision": round(precision, 3), "recall": round(recall, 3),
            "f1": round(f1, 3), "fpr": round(fp / (fp + tn), 3) if fp + tn else 0.0,
            "category_accuracy": round(right_category / (tp + fn), 3) if tp + fn else 0.0}


def cascade_report(head: Head, held: list[Example], vectors: Floats,
                   static: Floats, band: tuple[float, float]) -> dict[str, Any]:
    """Held-out figures of the cascade: the static head when sure, else the model."""
    assert head.fast is not None
    fast = [max(row.values()) for row in head.fast.predict(static)]
    full = [max(row.values()) for row in head.predict(vectors)]
    routed = [band[0] <= p <= band[1] for p in fast]
    decided = [f if r else p for p, f, r in zip(fast, full, routed, strict=True)]
    right = sum((p >= 0.5) == e.harmful for p, e in zip(decided, held, strict=True))
    return {"band": list(band), "routed_to_model": round(sum(routed) / len(held), 3),
            "accuracy": round(right / len(held), 3)}


def embed(texts: list[str], threads: int, cache: Path | None,
          layers: tuple[int, ...]) -> Floats:
    known: dict[str, Floats] = {}
    if cache is not None and cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            cached_layers = tuple(z["layers"].tolist()) if "layers" in z else LAST_LAYER
            if cached_layers == layers:  # vectors of other layers are other features
                known = dict(zip(z["texts"].tolist(), z["vectors"], strict=True))
    todo = [t for t in dict.fromkeys(texts) if t not in known]
    if todo:
        known.update(zip(todo, Encoder(threads).encode(todo, MAX_TOKENS, layers), strict=True))
        if cache is not None:
            np.savez(cache, texts=np.array(list(known)), vectors=np.stack(list(known.values())),
                     layers=np.array(layers))
    return np.stack([known[t] for t in texts]).astype(np.float32)


def layer_list(value: str) -> tuple[int, ...]:
    try:
        layers = tuple(sorted({int(part) for part in value.split(",")}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of layers: {value}") from None
    if not layers or layers[0] < 1 or layers[-1] > MAX_LAYER:
        raise argparse.ArgumentTypeError(f"layers must be within 1..{MAX_LAYER}")
    return layers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=Path, default=DATA / "examples.txt")
    parser.add_argument("--dev", type=Path, default=None,
                        help="classify_dev.jsonl: also train on its MIT-licensed train half")
    parser.add_argument("--out", type=Path, default=default_head_path())
    parser.add_argument("--l2-harm", type=float, default=1e-4)
    parser.add_argument("--operating-point", type=float, default=0.85,
                        help="fitted P(harm) that maps to 0.5; chosen on the held-out split "
                             "(whole chain): the lowest benign false-positive rate whose F1 "
                             "is within 0.01 of the best (DATA.md, 'The operating point')")
    parser.add_argument("--l2-cat", type=float, default=1e-4)
    parser.add_argument("--l2-fast", type=float, default=1e-4,
                        help="L2 of the static fast head (its features are weaker, so it "
                             "needs less shrinkage)")
    parser.add_argument("--fast-operating-point", type=float, default=0.7,
                        help="the static head's own operating point (it is less calibrated "
                             "than the model's: 0.7 keeps benign FPR near 3%% on its own)")
    parser.add_argument("--layers", type=layer_list, default=(2, 3, 4),
                        help="encoder layers whose pooled outputs the head reads (default "
                             "2,3,4: on held-out data they beat the last layer, and the "
                             "model then runs 4 of its 6 layers)")
    parser.add_argument("--hidden", type=int, default=128,
                        help="hidden ReLU units under the contextual harm model (0: plain "
                             "logistic regression; --l2-harm applies to that only)")
    parser.add_argument("--adapter-rank", type=int, default=8,
                        help="rank of the encoder's LoRA updates, trained with the harm "
                             "model (adapt.py; needs --hidden); 0: a frozen encoder")
    parser.add_argument("--adapter-epochs", type=int, default=4)
    parser.add_argument("--adapter-category-weight", type=float, default=0.0,
                        help="weight of a category loss learnt alongside the harm model "
                             "(0: harm only; 1.0 measured: categories better, harm worse)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--exclude-heldout", action="store_true",
                        help="leave the held-out split out of the written head too (to "
                             "evaluate the whole chain on it with `gateway eval classify`)")
    parser.add_argument("--cache", type=Path, help="reuse embeddings from/to this .npz")
    args = parser.parse_args(argv)

    examples = read_examples(args.examples)
    if args.dev is None and DEV_DEFAULT.is_file():
        args.dev = DEV_DEFAULT
    extra = read_dev(args.dev) if args.dev is not None else []
    started = time.perf_counter()
    everything = examples + extra
    adapted = args.adapter_rank > 0 and args.hidden > 0
    vectors = None  # the frozen encoder's: read only without an adapter
    if not adapted:
        vectors = embed([e.text for e in everything], args.threads, args.cache, args.layers)
        print(f"embedded {len(everything)} texts in {time.perf_counter() - started:.1f}s",
              file=sys.stderr)
    train_idx = [i for i, e in enumerate(everything) if i >= len(examples) or not e.heldout]
    held_idx = [i for i, e in enumerate(examples) if e.heldout]
    held = [everything[i] for i in held_idx]
    encoder = Encoder(args.threads)
    static = encoder.static().encode([e.text for e in everything], MAX_TOKENS)
    def fit_both(idx: list[int], meta: dict[str, Any]) -> tuple[Head, Floats]:
        """The head fitted on everything[idx], and the vectors of everything it reads."""
        rows = [everything[i] for i in idx]
        fast = fit(rows, static[idx], args.l2_fast, args.l2_cat, {},
                   args.fast_operating_point)
        tuned, read = None, vectors
        if adapted:
            started = time.perf_counter()
            kinds = sorted({e.category for e in rows if e.harmful and e.category != UNKNOWN})
            tuned = fine_tune(encoder, [e.text for e in rows], [e.harmful for e in rows],
                              args.layers, rank=args.adapter_rank, epochs=args.adapter_epochs,
                              categories=[kinds.index(e.category) if e.category in kinds
                                          else -1 for e in rows],
                              category_weight=args.adapter_category_weight,
                              hidden=args.hidden, threads=args.threads)
            read = encoder.encode([e.text for e in everything], MAX_TOKENS, args.layers,
                                  tuned.adapter)
            print(f"fine-tuned the encoder on {len(rows)} examples in "
                  f"{time.perf_counter() - started:.0f}s", file=sys.stderr)
        assert read is not None
        head = fit(rows, read[idx], args.l2_harm, args.l2_cat, meta, args.operating_point,
                   args.hidden, tuned)
        return replace(head, fast=fast, layers=args.layers), read

    probe, probe_vectors = fit_both(train_idx, {})
    assert probe.fast is not None
    heldout = report(probe, held, probe_vectors[held_idx])
    heldout_static = report(probe.fast, held, static[held_idx])
    cascade = cascade_report(probe, held, probe_vectors[held_idx], static[held_idx],
                             EmbeddingSpec().contextual_band)
    print(f"held-out split ({len(held)} of {len(examples)} examples): model "
          f"{json.dumps(heldout)}\n  static head {json.dumps(heldout_static)}\n  "
          f"cascade {json.dumps(cascade)}")

    counts = Counter(e.category for e in everything)
    meta = {
        "encoder": MODEL_NAME, "max_tokens": MAX_TOKENS, "trained_by": "classify/train.py",
        "examples": len(everything), "by_category": dict(sorted(counts.items())),
        "sources": dict(Counter(e.source for e in everything)),
        "heldout_split": heldout, "heldout_static": heldout_static,
        "heldout_cascade": cascade, "l2_fast": args.l2_fast,
        "fast_operating_point": args.fast_operating_point,
        "l2_harm": args.l2_harm, "l2_cat": args.l2_cat, "hidden": args.hidden,
        "operating_point": args.operating_point,
        "adapter_rank": args.adapter_rank if adapted else 0,
        "adapter_epochs": args.adapter_epochs if adapted else 0,
        "adapter_category_weight": args.adapter_category_weight if adapted else 0.0,
    }
    if args.exclude_heldout:
        keep = [i for i, e in enumerate(everything) if i >= len(examples) or not e.heldout]
        meta["excluded_heldout"] = True
    else:
        keep = list(range(len(everything)))
    head, _ = fit_both(keep, meta)
    head.save(args.out)
    print(f"wrote {args.out} ({len(head.categories)} categories)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
