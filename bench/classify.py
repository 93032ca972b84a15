"""Classifier chain latency: the policy's default chain, driven directly at fixed concurrency.

Builds the chain from the policy files exactly as the gateway does (rules + structure +
embedding model; guard off), then sends unique prompts (so the embedding cache never
helps) from `--concurrency` workers and prints per-request latency p50/p99, throughput and
how many prompts each model batch held. Also runs the chain without the model, for the
cost of the cheap classifiers alone. Target (issue 5): <= 5 ms p50, <= 20 ms p99 at
concurrency 16 on the 2-core development machine.

    python bench/classify.py [--requests N] [--concurrency C] [--threads T] [--window-ms W]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

from gateway.pipeline.classify.chain import Chain
from gateway.pipeline.classify.embedding import Embedder
from gateway.pipeline.classify.runtime import ClassifyRuntime
from gateway.pipeline.classify.text import PromptText
from gateway.policy.loader import load_policy
from gateway.policy.spec import TierSpec

ROOT = Path(__file__).resolve().parent.parent
DEV = ROOT.parent / "shared" / "datasets" / "classify_dev.jsonl"
EXAMPLES = ROOT / "gateway" / "pipeline" / "classify" / "data" / "examples.txt"


def prompts(n: int) -> list[str]:
    """n distinct prompts: the DEV set when present, else the training examples, varied."""
    if DEV.is_file():
        base = [json.loads(line)["text"] for line in DEV.read_text().splitlines() if line]
    else:
        base = [line for line in EXAMPLES.read_text().splitlines()
                if line and not line.startswith("#")]
    return [base[i % len(base)] + ("" if i < len(base) else f" (variant {i})")
            for i in range(n)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def drive(chain: Chain, tier: TierSpec, texts: list[str], concurrency: int,
                ) -> dict[str, float]:
    queue: asyncio.Queue[str] = asyncio.Queue()
    for text in texts:
        queue.put_nowait(text)
    latencies: list[float] = []

    async def worker() -> None:
        while not queue.empty():
            text = queue.get_nowait()
            started = time.perf_counter()
            await chain.classify(PromptText.of(text), tier)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    ms = [x * 1000 for x in latencies]
    return {"requests": len(ms), "p50_ms": round(percentile(ms, 0.5), 2),
            "p99_ms": round(percentile(ms, 0.99), 2), "mean_ms": round(statistics.mean(ms), 2),
            "requests_per_s": round(len(ms) / elapsed, 1)}


async def main(args: argparse.Namespace) -> int:
    policy = load_policy(args.policies)
    tier = policy.tiers[args.tier]
    embedder = Embedder(threads=args.threads, batch_window_s=args.window_ms / 1000,
                        max_batch=args.max_batch, cache_size=0)
    runtime = ClassifyRuntime(embedder=embedder)
    await runtime.start()
    chain = runtime.build_chain(policy)
    texts = prompts(args.requests + args.warmup)
    await drive(chain, tier, texts[:args.warmup], args.concurrency)
    batches = embedder.batches
    full = await drive(chain, tier, texts[args.warmup:], args.concurrency)
    full["prompts_per_batch"] = round(args.requests / max(1, embedder.batches - batches), 2)
    cheap = Chain(chain.cheap, (), chain.categories)
    rules_only = await drive(cheap, tier, texts[args.warmup:], args.concurrency)
    await runtime.close()
    report = {"chain": list(chain.names), "unavailable": list(chain.unavailable),
              "concurrency": args.concurrency, "threads": args.threads,
              "window_ms": args.window_ms, "default_chain": full,
              "rules_and_structure_only": rules_only,
              "target": {"p50_ms": 5.0, "p99_ms": 20.0}}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=320)
    parser.add_argument("--warmup", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--window-ms", type=float, default=2.0)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--tier", default="public")
    parser.add_argument("--policies", type=Path, default=ROOT / "policies")
    sys.exit(asyncio.run(main(parser.parse_args())))
