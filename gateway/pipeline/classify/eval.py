"""`gateway eval classify FILE.jsonl [--tier T] [--json] [--policies DIR]`.

Runs the policy's classifier chain (the same one the gateway builds, embedding model
included when installed) over a labelled file, one prompt at a time, and reports how well
the tier's decisions match the labels. A line is `{"text", "label": "harmful"|"benign",
"category"?, "source"?}`; a prediction is *harmful* when the tier's action is flag or
block. Reported: precision, recall and F1 for harmful, the false-positive rate on benign,
the same per `source`, a confusion table of labelled category x top matched category,
and latency p50/p99 per prompt (the chain's time, measured sequentially).

Every figure comes with its 95% interval (`ci95`): a few hundred rows leave a few points
of doubt either way, which matters when a target is 0.85 and the score 0.86. Rates use
the Wilson score interval (sound at 0 and at 100%); F1, which is not a rate, a seeded
bootstrap over the rows, so a run is repeatable. An interval with no rows to estimate
from (recall for a source without harmful rows) is null.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from gateway.pipeline.classify.chain import Chain
from gateway.pipeline.classify.text import PromptText
from gateway.policy.spec import PolicySpec, TierSpec

LABELS = ("harmful", "benign")
Z95 = 1.959964  # the standard normal's 97.5th percentile
BOOTSTRAP_RESAMPLES = 1000
Interval = tuple[float, float] | None


class EvalInputError(ValueError):
    """The labelled file is unreadable; the message names file and line."""


@dataclass(frozen=True, slots=True)
class Row:
    text: str
    harmful: bool
    category: str | None
    source: str | None


@dataclass(frozen=True, slots=True)
class Outcome:
    row: Row
    predicted: bool
    action: str
    top: str  # the highest matched category, or "none"
    seconds: float


def load_rows(path: Path) -> list[Row]:
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # a BOM is not JSON
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8"
        raise EvalInputError(f"{path}: cannot read: {reason}") from None
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EvalInputError(f"{path}:{n}: not JSON: {exc.msg}") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("text"), str):
            raise EvalInputError(f"{path}:{n}: expected an object with a string `text`")
        if raw.get("label") not in LABELS:
            raise EvalInputError(f"{path}:{n}: `label` must be harmful or benign")
        category, source = raw.get("category"), raw.get("source")
        rows.append(Row(raw["text"], raw["label"] == "harmful",
                        category if isinstance(category, str) else None,
                        source if isinstance(source, str) else None))
    if not rows:
        raise EvalInputError(f"{path}:1: no rows")
    return rows


async def classify_rows(chain: Chain, tier: TierSpec, rows: Sequence[Row]) -> list[Outcome]:
    outcomes = []
    for row in rows:
        started = time.perf_counter()
        verdict = await chain.classify(PromptText.of(row.text).clipped(chain.max_chars), tier)
        seconds = time.perf_counter() - started
        outcomes.append(Outcome(row, verdict.action in ("flag", "block"), verdict.action,
                                verdict.categories[0] if verdict.categories else "none",
                                seconds))
    return outcomes


def _ratio(a: int, b: int) -> float | None:
    """a / b, or None when there is nothing to estimate it from (no benign rows: no fpr)."""
    return round(a / b, 4) if b else None


def _scores(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    tp = sum(o.row.harmful and o.predicted for o in outcomes)
    fp = sum(not o.row.harmful and o.predicted for o in outcomes)
    fn = sum(o.row.harmful and not o.predicted for o in outcomes)
    tn = sum(not o.row.harmful and not o.predicted for o in outcomes)
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1: float | None = None  # no harmful rows: no F1
    if recall is not None:
        p = precision or 0.0  # nothing flagged: precision undefined, F1 0
        f1 = round(2 * p * recall / (p + recall), 4) if p + recall else 0.0
    ci95 = {"precision": wilson(tp, tp + fp), "recall": wilson(tp, tp + fn),
            "f1": f1_interval(tp, fp, fn, tn), "fpr": wilson(fp, fp + tn)}
    return {"n": len(outcomes), "harmful": tp + fn, "benign": fp + tn, "tp": tp, "fp": fp,
            "fn": fn, "tn": tn, "precision": precision, "recall": recall, "f1": f1,
            "fpr": _ratio(fp, fp + tn), "ci95": ci95}


def wilson(k: int, n: int) -> Interval:
    """95% Wilson score interval for k successes in n trials; None when n is 0."""
    if n == 0:
        return None
    p, z2 = k / n, Z95 * Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)


def f1_interval(tp: int, fp: int, fn: int, tn: int,
                resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> Interval:
    """95% percentile-bootstrap interval for F1: the rows are redrawn with replacement (a
    draw of the four outcome counts), seeded so the same counts give the same interval.
    None without harmful rows."""
    n = tp + fp + fn + tn
    if tp + fn == 0:
        return None
    rng = random.Random(seed)
    cumulative = (tp, tp + fp, tp + fp + fn, n)
    scores = []
    for _ in range(resamples):
        draw = rng.choices((0, 1, 2, 3), cum_weights=cumulative, k=n)
        t, f_pos, f_neg = draw.count(0), draw.count(1), draw.count(2)
        scores.append(2 * t / (2 * t + f_pos + f_neg) if t else 0.0)
    scores.sort()
    return (round(scores[int(0.025 * (resamples - 1))], 4),
            round(scores[math.ceil(0.975 * (resamples - 1))], 4))


def _with_interval(value: float | None, interval: Interval) -> str:
    if value is None:
        return "-"  # no rows to estimate it from
    return f"{value:.3f}" if interval is None else \
        f"{value:.3f} ({interval[0]:.3f}-{interval[1]:.3f})"


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def summarize(outcomes: Sequence[Outcome], tier: str, chain: Chain) -> dict[str, Any]:
    report = _scores(outcomes)
    by_source: dict[str, list[Outcome]] = defaultdict(list)
    confusion: dict[str, Counter[str]] = defaultdict(Counter)
    for o in outcomes:
        if o.row.source is not None:
            by_source[o.row.source].append(o)
        label = o.row.category or ("harmful" if o.row.harmful else "benign")
        confusion[label][o.top] += 1
    millis = [o.seconds * 1000 for o in outcomes]
    report.update({
        "tier": tier,
        "classifiers": list(chain.names),
        "unavailable": list(chain.unavailable),
        "latency_ms_p50": round(_percentile(millis, 0.50), 3),
        "latency_ms_p99": round(_percentile(millis, 0.99), 3),
        "by_source": {s: _scores(rows) for s, rows in sorted(by_source.items())},
        "confusion": {label: dict(counts.most_common())
                      for label, counts in sorted(confusion.items())},
    })
    return report


def render(report: dict[str, Any]) -> str:
    ci = report["ci95"]
    lines = [
        f"tier {report['tier']}: classifiers {', '.join(report['classifiers']) or '(none)'}",
        *(f"  unavailable: {u}" for u in report["unavailable"]),
        f"{report['n']} prompts ({report['harmful']} harmful, {report['benign']} benign)",
        f"harmful  precision {_with_interval(report['precision'], ci['precision'])}  "
        f"recall {_with_interval(report['recall'], ci['recall'])}  "
        f"F1 {_with_interval(report['f1'], ci['f1'])}",
        f"benign   false-positive rate {_with_interval(report['fpr'], ci['fpr'])}",
        f"latency  p50 {report['latency_ms_p50']:.2f} ms  p99 {report['latency_ms_p99']:.2f} ms",
        f"95% intervals: Wilson for rates, a {BOOTSTRAP_RESAMPLES}-resample bootstrap for F1",
    ]
    if report["by_source"]:
        lines += ["", f"{'source':<20} {'n':>5} {'recall':>19} {'fpr':>19} {'f1':>19}"]
        for source, s in report["by_source"].items():
            figures = [_with_interval(s[name], s["ci95"][name]) if s["ci95"][name] else "-"
                       for name in ("recall", "fpr", "f1")]
            lines.append(f"{source:<20} {s['n']:>5} " + " ".join(f"{f:>19}" for f in figures))
    lines += ["", "confusion (labelled category -> top matched category)"]
    for label, counts in report["confusion"].items():
        cells = ", ".join(f"{c} {n}" for c, n in counts.items())
        lines.append(f"  {label}: {cells}")
    return "\n".join(lines)


def add_eval_parser(subparsers: Any) -> None:
    """Register `eval classify` on the CLI's subparsers (run with `run_eval`)."""
    p = subparsers.add_parser("eval", help="evaluate the request classifier on labelled data")
    cmds = p.add_subparsers(dest="eval_command", required=True)
    c = cmds.add_parser("classify", help="precision/recall/F1 and false-positive rate of "
                                         "the classifier chain on a labelled JSONL file")
    c.add_argument("file", type=Path, help='JSON lines: {"text", "label": "harmful" or '
                                           '"benign", "category"? (any name: a row of the '
                                           'confusion table), "source"?}')
    c.add_argument("--tier", default="public", help="tier whose actions decide (public)")
    c.add_argument("--json", action="store_true", help="one JSON object instead of text")
    c.add_argument("--policies", type=Path, help="policy directory (default GATEWAY_POLICIES "
                                                 "or policies/)")


async def evaluate(policies: Path, tier_name: str, rows: Sequence[Row]) -> dict[str, Any]:
    """Build the policy's chain (loading the model), classify every row, summarise."""
    from gateway.pipeline.classify.admission import ModelAdmission
    from gateway.pipeline.classify.runtime import ClassifyRuntime
    from gateway.policy.loader import load_policy

    policy = unhurried(load_policy(policies))
    tier = policy.tiers.get(tier_name)
    if tier is None:
        raise EvalInputError(f"unknown tier {tier_name!r} (known: {', '.join(policy.tiers)})")
    runtime = ClassifyRuntime()
    runtime.embedder.admission = ModelAdmission(adaptive=False)  # as unhurried(): repeatable
    await runtime.start(load_model=policy.classifiers.embedding.enabled)
    try:
        chain = runtime.build_chain(policy)
        return summarize(await classify_rows(chain, tier, rows), tier_name, chain)
    finally:
        await runtime.close()


def unhurried(policy: PolicySpec) -> PolicySpec:
    """The policy with the cascade's model given its whole `timeout_s` on every prompt: the
    serving `contextual_timeout_s` is a load decision, and a momentarily slow forward pass
    falling back to the static head would make the same file score differently run to run."""
    embedding = policy.classifiers.embedding
    wait = max(embedding.timeout_s, embedding.contextual_timeout_s)
    classifiers = replace(policy.classifiers,
                          embedding=replace(embedding, contextual_timeout_s=wait))
    return replace(policy, classifiers=classifiers)


def run_eval(args: argparse.Namespace) -> int:
    from gateway.pipeline.classify.runtime import ClassifyConfigError
    from gateway.policy.loader import PolicyError

    policies = args.policies
    if policies is None:
        from gateway.settings import load_settings

        policies = load_settings(overrides={}).policies
    try:
        rows = load_rows(args.file)
        report = asyncio.run(evaluate(policies, args.tier, rows))
    except (EvalInputError, ClassifyConfigError) as exc:
        print(f"gateway eval classify: {exc}", file=sys.stderr)
        return 2
    except PolicyError as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0
