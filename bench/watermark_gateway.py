"""bench/watermark.py, part one: responses through a real gateway in front of the simulator.

Two gateways front one `gateway sim`: "on" (the trusted tier with payload and ledger on,
limits lifted) and "off" (a policy copy where the same tier has payload and ledger off).
The simulator answers in prose mode (`[[sim:prose=all]]`: long Markdown-ish answers with
code blocks, JSON, links, emoji, RTL and CJK text, deterministic from the prompt), so every
response is generated upstream and goes through the real path: the simulator's tokens
(emoji split across them), the gateway's SSE relay, its filter chain and its ledger writer.
The same prompt through "off" gives the unmarked original to compare with.

Measured here: payload round trip, streaming and not (the answer less its marks is the
original, every payload in it is genuine and names the asker's key, no mark sits in code,
inline code or a URL; JSON mode carries no mark at all); excerpt attribution through
`POST /admin/v1/watermark/detect` for several keys; and the cost of watermarking on
streams (time to first content chunk and the gaps between chunks) against the "off"
gateway, same simulator, same load, same run.
"""

from __future__ import annotations

import random
import shutil
import statistics
import subprocess
import tempfile
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from procs import MODEL, free_port, policy_copy, start, stop, stream_timings
from watermark_text import contents, edit, excerpt, misplaced, pct, prose_run

from gateway.devkeys import mint_token
from gateway.pipeline.watermark.payload import (
    count_marks,
    extract_payloads,
    key_id,
    strip_marks,
    verify,
)
from gateway.secret_store import load_secret
from gateway.sim.prose import NOUNS

KEYS = 5  # distinct subjects (and so key ids) the responses are spread over
EXCERPTS = 3  # excerpts taken from each response (at random places, of random lengths)
PROSE = "[[sim:prose=all,tps=0]]"
Add = Callable[[str, str], None]


def _trusted(on: bool) -> Callable[[dict[str, Any], dict[str, Any]], None]:
    def edit_tiers(tiers: dict[str, Any], classifiers: dict[str, Any]) -> None:
        trusted = tiers["tiers"]["trusted"]
        trusted.pop("limits", None)  # the bench is the only client: no rate limit
        trusted["watermark"] = {"payload": on, "ledger": on}
    return edit_tiers


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


def start_gateways() -> Gateways:
    """The simulator and the two gateways, all on free loopback ports, one GATEWAY_HOME."""
    home = Path(tempfile.mkdtemp(prefix="gateway-bench-watermark-"))
    sim = f"http://127.0.0.1:{free_port()}"
    procs = [start(["sim", "--port", sim.rsplit(":", 1)[1]], sim + "/health", str(home))]
    urls = {name: f"http://127.0.0.1:{free_port()}" for name in ("on", "off")}

    def serve(name: str) -> subprocess.Popen[bytes]:
        policies = policy_copy(home / f"policies-{name}", _trusted(name == "on"))
        # One home for both: the same signing keys and watermark secret (SQLite takes
        # the two writers of the audit log; only "on" writes the ledger).
        return start(["serve", "--port", urls[name].rsplit(":", 1)[1], "--upstream", sim],
                     urls[name] + "/readyz", str(home), timeout_s=120,
                     GATEWAY_POLICIES=policies)

    # Side by side: each spends most of its start loading the classifier's model.
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(serve, name) for name in urls]
    failed = [e for f in futures if (e := f.exception()) is not None]
    procs += [f.result() for f in futures if f.exception() is None]
    if failed:
        stop(*procs)
        raise failed[0]
    return Gateways(urls["on"], urls["off"], home, procs)


def stop_gateways(gw: Gateways) -> None:
    stop(*reversed(gw.procs))
    shutil.rmtree(gw.home, ignore_errors=True)


async def _ask(http: aiohttp.ClientSession, url: str, token: str, prompt: str, stream: bool,
               **extra: Any) -> str:
    """The answer's text, through the OpenAI-compatible chat API."""
    body = {"model": MODEL, "max_tokens": 4096, "stream": stream,
            "messages": [{"role": "user", "content": prompt}], **extra}
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


def _genuine(out: str, original: str, secret: bytes, kid: str) -> bool:
    found = extract_payloads(out)
    return (strip_marks(out) == original and bool(found)
            and all(p.key_id == kid and verify(p, secret) for p in found)
            and not misplaced(out, original))


async def round_trip(gw: Gateways, n: int, rng: random.Random, add: Add) -> list[Sent]:
    """n prompts, each asked through "off" (the original), and through "on" streamed,
    not streamed and in JSON mode."""
    secret = load_secret(gw.home, "watermark")
    sent: list[Sent] = []
    streamed_ok = whole_ok = json_clean = off_clean = 0
    async with aiohttp.ClientSession() as http:
        for i in range(n):
            sub = f"bench-user-{i % KEYS}"
            token, kid = gw.token(sub), key_id(secret, sub)
            prompt = f"{PROSE} Answer {i}: tell me about the {rng.choice(NOUNS)}."
            original = await _ask(http, gw.off, token, prompt, stream=i % 2 == 0)
            off_clean += count_marks(original) == 0
            streamed = await _ask(http, gw.on, token, prompt, stream=True)
            whole = await _ask(http, gw.on, token, prompt, stream=False)
            streamed_ok += _genuine(streamed, original, secret, kid)
            whole_ok += _genuine(whole, original, secret, kid)
            as_json = await _ask(http, gw.on, token, prompt, stream=i % 2 == 1,
                                 response_format={"type": "json_object"})
            json_clean += as_json == original and count_marks(as_json) == 0
            sent.append(Sent(sub, original, streamed))
    originals = [s.original for s in sent]
    add("gateway responses (chars, avg)", f"{n} ({sum(map(len, originals)) // n})")
    add("  containing", contents(originals))
    add("gateway payload round trip, streamed", f"{streamed_ok}/{n} = {streamed_ok / n:.1%}")
    add("gateway payload round trip, not streamed", f"{whole_ok}/{n} = {whole_ok / n:.1%}")
    add("gateway JSON mode (response_format): the original, no mark", f"{json_clean}/{n}")
    add("gateway with watermark off: no mark", f"{off_clean}/{n}")
    return sent


async def attribution(gw: Gateways, sent: list[Sent], rng: random.Random, add: Add) -> None:
    """Excerpts of each response, marks intact, stripped, and stripped and edited, sent to
    the admin detect endpoint; a hit when it names the right key."""
    secret = load_secret(gw.home, "watermark")
    admin = {"Authorization": f"Bearer {gw.token('bench-admin', admin=True)}"}
    kinds = {"marks intact": 0, "marks stripped": 0, "stripped + 20% words edited": 0}
    scores: list[float] = []
    tried = 0
    async with aiohttp.ClientSession(headers=admin) as http:
        for item in sent:
            words = prose_run(item.marked)
            if len(words) < 50:
                continue
            kid = key_id(secret, item.sub)
            for _ in range(EXCERPTS):
                tried += 1
                marked = excerpt(words, rng)
                plain = strip_marks(marked)
                edited = " ".join(edit(plain.split(), 0.2, rng))
                for label, text in zip(kinds, (marked, plain, edited), strict=True):
                    async with http.post(gw.on + "/admin/v1/watermark/detect",
                                         json={"text": text}) as resp:
                        report = await resp.json()
                    kinds[label] += (report.get("attribution") or {}).get("key_id") == kid
                top = report["ledger"]["matches"][:1]
                scores.append(top[0]["similarity"] if top and top[0]["key_id"] == kid
                              else 0.0)
    for label, hits in kinds.items():
        add(f"gateway detect, {label} -> right key",
            f"{hits}/{tried} = {hits / max(1, tried):.1%}")
    add("  similarity of edited excerpts to their record p5 / p50",
        f"{pct(scores, .05):.3f} / {pct(scores, .5):.3f} (match >= 0.3)")


async def stream_cost(gw: Gateways, streams: int, tps: int, rounds: int, add: Add) -> None:
    """The same streams through "off" and "on", in rounds of alternating order (off on,
    on off, ...: a drift over the run cancels out), after a warm-up of each: one at a
    time (the time to first token a request pays, free of queueing), then under load
    (8 at a time: the gaps between chunks)."""
    token = gw.token("bench-cost")
    prompt = "[[sim:prose=all]] Write about rivers and the harbours they feed"
    for url in (gw.off, gw.on):
        await stream_timings(url, token, 8, 8, 20, tps, prompt)
    single = await _rounds(gw, rounds, lambda url: stream_timings(
        url, token, max(20, streams), 1, 10, 0, prompt))
    add(f"{rounds} rounds of {max(20, streams)} streams one at a time: TTFT p50 off / on",
        f"{single['off']['ttft_p50_ms']:.2f} / {single['on']['ttft_p50_ms']:.2f} ms, added "
        f"{single['on']['ttft_p50_ms'] - single['off']['ttft_p50_ms']:+.2f} ms")
    loaded = await _rounds(gw, rounds, lambda url: stream_timings(
        url, token, streams, 8, 200, tps, prompt))
    off, on = loaded["off"], loaded["on"]
    add(f"{rounds} rounds of {streams} streams x 200 tokens at {tps} tok/s (8 at a time), "
        "watermark off:", _timing(off))
    add("  the same with watermark on:", _timing(on))
    add("  added by watermarking: TTFT p50, gap p50 / p99",
        f"{on['ttft_p50_ms'] - off['ttft_p50_ms']:+.2f} ms, "
        f"{on['gap_p50_ms'] - off['gap_p50_ms']:+.3f} / "
        f"{on['gap_p99_ms'] - off['gap_p99_ms']:+.3f} ms")


async def _rounds(gw: Gateways, rounds: int,
                  measure: Callable[[str], Awaitable[dict[str, float]]],
                  ) -> dict[str, dict[str, float]]:
    """measure(url) for "off" and "on" in alternating order; per side, the median of each
    figure over the rounds (one round disturbed by a neighbour on the machine is ignored)."""
    runs: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    for r in range(rounds):
        for name in ("off", "on") if r % 2 == 0 else ("on", "off"):
            runs[name].append(await measure(gw.off if name == "off" else gw.on))
    return {name: {k: statistics.median(run[k] for run in got) for k in got[0]}
            for name, got in runs.items()}


def _timing(t: dict[str, float]) -> str:
    return (f"TTFT p50/p99 {t['ttft_p50_ms']:.1f}/{t['ttft_p99_ms']:.1f} ms, "
            f"gap p50/p99 {t['gap_p50_ms']:.2f}/{t['gap_p99_ms']:.2f} ms")
