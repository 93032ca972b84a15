"""What the green-list logits processor costs vLLM: the same batch of requests with and
without a key (rounds alternate), tokens per second for each.

    python vllm_check/processor_speed.py URL MODEL [CONCURRENCY] [TOKENS] [ROUNDS]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from typing import Any

import aiohttp


async def _batch(http: aiohttp.ClientSession, url: str, model: str, n: int, tokens: int,
                 keyed: bool) -> tuple[float, int]:
    async def one(i: int) -> int:
        body: dict[str, Any] = {"model": model, "prompt": f"Story {i}:", "max_tokens": tokens,
                                "temperature": 1.0, "ignore_eos": True}
        if keyed:
            body["vllm_xargs"] = {"gateway_key_id": f"{i:016x}"}
        async with http.post(url + "/v1/completions", json=body) as resp:
            data = await resp.json()
        return int(data["usage"]["completion_tokens"])

    started = time.perf_counter()
    counts = await asyncio.gather(*(one(i) for i in range(n)))
    return time.perf_counter() - started, sum(counts)


async def main(url: str, model: str, n: int, tokens: int, rounds: int) -> None:
    rates: dict[bool, list[float]] = {False: [], True: []}
    async with aiohttp.ClientSession() as http:
        await _batch(http, url, model, n, 16, True)  # warm-up
        for _ in range(rounds):
            for keyed in (False, True):
                seconds, count = await _batch(http, url, model, n, tokens, keyed)
                rates[keyed].append(count / seconds)
    plain, keyed = statistics.median(rates[False]), statistics.median(rates[True])
    print(f"concurrency {n}, {tokens} tokens each, {rounds} rounds (median):")
    print(f"  without key: {plain:,.0f} tokens/s")
    print(f"  with key:    {keyed:,.0f} tokens/s  (ratio {keyed / plain:.3f})")


if __name__ == "__main__":
    args = sys.argv[1:]
    asyncio.run(main(args[0], args[1], int(args[2]) if len(args) > 2 else 32,
                     int(args[3]) if len(args) > 3 else 256,
                     int(args[4]) if len(args) > 4 else 3))
