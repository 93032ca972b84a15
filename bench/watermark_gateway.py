"""bench/watermark.py, part one: responses through a real gateway in front of the simulator.

Two gateways front one `gateway sim`: "on" (the trusted tier with payload and ledger on,
limits lifted) and "off" (the same tier, watermark payload and ledger off). The simulator
answers with the benchmark's own generated responses (its `echo` directive), so the
corpus with code blocks, JSON, emoji, RTL and CJK text goes through the real SSE path:
small tokens, the gateway's relay, its filter chain and its ledger writer.

Measured here: payload round trip (streaming and not, JSON mode carries no mark), excerpt
attribution through `POST /admin/v1/watermark/detect` for several keys, and the cost of
watermarking on streams (time to first content chunk and the gaps between chunks) against
the "off" gateway in the same run.
"""

from __future__ import annotations

import asyncio
import random
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from procs import MODEL, free_port, policy_copy, start, stop, stream_timings

from gateway.devkeys import mint_token
from gateway.pipeline.watermark.payload import extract_payloads, key_id, strip_marks, verify
from gateway.secret_store import load_secret

KEYS = 5  # distinct subjects (and so key ids) the responses are spread over
_WORD = re.compile(r"[^\W\d_]{3,}")


def _without_code(text: str, forbidden: Callable[[str], list[tuple[int, int]]]) -> str:
    kept, last = [], 0
    for begin, end in sorted(forbidden(text)):
        kept.append(text[last:begin])
        last = max(last, end)
    return "".join(kept) + text[last:]


def _trusted(payload: bool) -> Callable[[dict[str, Any], dict[str, Any]], None]:
    def edit(tiers: dict[str, Any], classifiers: dict[str, Any]) -> None:
        trusted = tiers["tiers"]["trusted"]
        trusted.pop("limits", None)
        trusted["watermark"] = {"payload": payload, "ledger": payload}
    return edit


@dataclass
class Sent:
    sub: str
    original: str
    marked: str


@dataclass
class Gateways:
    on: str
    off: str
    home: Path
    procs: list[Any]

    def token(self, sub: str, admin: bool = False) -> str:
        return mint_token(self.home, tier="trusted", sub=sub,
                          scopes=("admin",) if admin else ())


async def start_gateways() -> Gateways:
    home = Path(tempfile.mkdtemp(prefix="gateway-bench-watermark-"))
    sim = f"http://127.0.0.1:{free_port()}"
    procs = [start(["sim", "--port", sim.rsplit(":", 1)[1]], sim + "/health", str(home))]
    urls = []
    for name, payload in (("on", True), ("off", False)):
        url = f"http://127.0.0.1:{free_port()}"
        policies = policy_copy(home / f"policies-{name}", _trusted(payload))
        # One home for both: the same signing keys and watermark secret (SQLite takes
        # the two writers of the audit log; only "on" writes the ledger).
        procs.append(start(["serve", "--port", url.rsplit(":", 1)[1], "--upstream", sim],
                           url + "/readyz", str(home), timeout_s=120,
                           GATEWAY_POLICIES=policies))
        urls.append(url)
    return Gateways(urls[0], urls[1], home, procs)


async def _ask(http: aiohttp.ClientSession, url: str, token: str, text: str, stream: bool,
               **extra: Any) -> str:
    body = {"model": MODEL, "max_tokens": 4096, "stream": stream,
            "messages": [{"role": "user", "content": f"[[sim:echo,tps=0]] {text}"}], **extra}
    headers = {"Authorization": f"Bearer {token}"}
    async with http.post(url + "/v1/chat/completions", json=body, headers=headers) as resp:
        if resp.status != 200:
            raise SystemExit(f"gateway answered {resp.status}: {await resp.text()}")
        if not stream:
            return str((await resp.json())["choices"][0]["message"]["content"])
        parts = []
        async for line in resp.content:
            if line.startswith(b"data: {"):
                for choice in orjson.loads(line[6:]).get("choices") or []:
                    parts.append((choice.get("delta") or {}).get("content") or "")
        return "".join(parts)


async def round_trip(gw: Gateways, texts: list[str], add: Callable[[str, str], None],
                     forbidden: Callable[[str], list[tuple[int, int]]],
                     mark_offsets: Callable[[str], list[int]]) -> list[Sent]:
    secret = load_secret(gw.home, "watermark")
    sent: list[Sent] = []
    ok = json_clean = misplaced = code_only = 0
    async with aiohttp.ClientSession() as http:
        for i, text in enumerate(texts):
            sub = f"bench-user-{i % KEYS}"
            token = gw.token(sub)
            streamed = await _ask(http, gw.on, token, text, stream=True)
            whole = await _ask(http, gw.on, token, text, stream=False)
            kid = key_id(secret, sub)
            # Marks go in prose only: an answer that is all code blocks carries none (the
            # ledger still knows it).
            prose = bool(_WORD.search(_without_code(text, forbidden)))
            code_only += not prose
            good = True
            for out in (streamed, whole):
                found = extract_payloads(out)
                good &= strip_marks(out) == text and bool(found) == prose and all(
                    p.key_id == kid and verify(p, secret) for p in found)
            bad = [o for o in mark_offsets(streamed) + mark_offsets(whole)
                   if any(a < o < b for a, b in forbidden(text))]
            misplaced += bool(bad)
            ok += good and not bad
            as_json = await _ask(http, gw.on, token, text, stream=True,
                                 response_format={"type": "json_object"})
            json_clean += as_json == text
            sent.append(Sent(sub, text, streamed))
    n = len(texts)
    add("through the gateway: responses (stream + non-stream each)", f"{n}")
    add("gateway round trip: strip == original, genuine payload, right key",
        f"{ok}/{n} = {ok / n:.1%} ({code_only} all-code answers: rightly no payload)")
    add("gateway responses with a mark in code/inline code/URL", f"{misplaced}/{n}")
    add("gateway JSON mode (response_format) answers without any mark", f"{json_clean}/{n}")
    return sent


async def attribution(gw: Gateways, sent: list[Sent], rng: random.Random,
                      prose_run: Callable[[str], list[str]],
                      edit: Callable[[list[str], float, random.Random], list[str]],
                      add: Callable[[str, str], None]) -> None:
    secret = load_secret(gw.home, "watermark")
    admin = {"Authorization": f"Bearer {gw.token('bench-admin', admin=True)}"}
    kinds = {"marks intact": 0, "marks stripped": 0, "stripped + 20% words edited": 0}
    tried = 0
    async with aiohttp.ClientSession(headers=admin) as http:
        await asyncio.sleep(1.0)  # the ledger writes after each response
        for item in sent:
            words = prose_run(item.marked)
            if len(words) < 50:
                continue
            tried += 1
            n = rng.randint(50, min(120, len(words)))
            first = rng.randrange(len(words) - n + 1)
            excerpt = " ".join(words[first:first + n])
            plain = strip_marks(excerpt)
            for label, text in (("marks intact", excerpt), ("marks stripped", plain),
                                ("stripped + 20% words edited",
                                 " ".join(edit(plain.split(), 0.2, rng)))):
                async with http.post(gw.on + "/admin/v1/watermark/detect",
                                     json={"text": text}) as resp:
                    report = await resp.json()
                found = report.get("attribution") or {}
                kinds[label] += found.get("key_id") == key_id(secret, item.sub)
    for label, hits in kinds.items():
        add(f"gateway detect, {label} -> right key",
            f"{hits}/{tried} = {hits / max(1, tried):.1%}")


async def stream_cost(gw: Gateways, streams: int, tps: int,
                      add: Callable[[str, str], None]) -> None:
    token = gw.token("bench-cost")
    prompt = "Write about rivers and the harbours they feed"
    results = {}
    for name, url in (("off", gw.off), ("on", gw.on), ("off again", gw.off)):
        results[name] = await stream_timings(url, token, streams, 8, 200, tps, prompt)
    off = {k: (results["off"][k] + results["off again"][k]) / 2 for k in results["on"]}
    on = results["on"]
    add(f"streams at {tps} tok/s, watermark off: TTFT p50/p99, gap p50/p99",
        f"{off['ttft_p50_ms']:.1f}/{off['ttft_p99_ms']:.1f} ms, "
        f"{off['gap_p50_ms']:.2f}/{off['gap_p99_ms']:.2f} ms")
    add("same with watermark on",
        f"{on['ttft_p50_ms']:.1f}/{on['ttft_p99_ms']:.1f} ms, "
        f"{on['gap_p50_ms']:.2f}/{on['gap_p99_ms']:.2f} ms")
    add("added by watermarking: TTFT p50, gap p50 / p99",
        f"{on['ttft_p50_ms'] - off['ttft_p50_ms']:+.2f} ms, "
        f"{on['gap_p50_ms'] - off['gap_p50_ms']:+.3f} / "
        f"{on['gap_p99_ms'] - off['gap_p99_ms']:+.3f} ms")


def stop_gateways(gw: Gateways) -> None:
    stop(*reversed(gw.procs))
