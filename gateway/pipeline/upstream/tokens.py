"""Prompt token counts: the backend's own /tokenize when it has one, else an estimate.

Counts are cached per identical (model, prompt) so a client resending the same long
conversation costs one tokenizer call. A list of prompts (completions) or of inputs
(embeddings) is counted item by item, concurrently, up to MAX_ITEMS items. The estimate
(documented in the README) is ceil(characters / 3) + 4 per chat message: deliberately on
the high side, because it feeds token reservations and caps, where undercounting lets
callers overshoot.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
from collections import OrderedDict
from typing import Any

import aiohttp
import orjson

from gateway.context import RequestContext
from gateway.pipeline.upstream.http import UpstreamHTTP
from gateway.pipeline.upstream.pool import Pool
from gateway.pipeline.upstream.reading import SMALL_BODY_BYTES, BodyTooLarge, read_bounded

log = logging.getLogger("gateway.tokens")

PER_MESSAGE = 4
CHARS_PER_TOKEN = 3
MAX_ITEMS = 32  # a longer list of prompts is estimated: one tokenizer call per item


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content
                        if isinstance(part, dict) and isinstance(part.get("text"), str))
    return ""


def estimate(body: dict[str, Any]) -> int:
    if "messages" in body:
        chars = sum(len(_text_of(m.get("content"))) for m in body["messages"])
        return math.ceil(chars / CHARS_PER_TOKEN) + PER_MESSAGE * len(body["messages"])
    prompt = body.get("prompt", body.get("input", ""))
    if isinstance(prompt, str):
        return math.ceil(len(prompt) / CHARS_PER_TOKEN)
    if prompt and all(type(p) is int for p in prompt):
        return len(prompt)
    return sum(math.ceil(len(p) / CHARS_PER_TOKEN) if isinstance(p, str)
               else len(p) if isinstance(p, list) else 0 for p in prompt)  # lists: token ids


async def count_prompt(ctx: RequestContext, counter: PromptCounter | None) -> int:
    """ctx.prompt_tokens, counted once: by the backend's tokenizer, else estimated."""
    if ctx.prompt_tokens is None:
        ctx.prompt_tokens = await counter.count(ctx) if counter is not None else estimate(
            ctx.body)
    return ctx.prompt_tokens


class PromptCounter:
    def __init__(self, pool: Pool, http: UpstreamHTTP, timeout_s: float = 1.0,
                 cache_size: int = 4096) -> None:
        self._pool = pool
        self._http = http  # once per request on tiers that bound the prompt: the lean client
        self._timeout_s = timeout_s
        self._cache: OrderedDict[bytes, int] = OrderedDict()
        self._cache_size = cache_size
        self._no_tokenize: set[str] = set()  # backends that answered 404 once

    def context_length(self, model: str) -> int | None:
        """The model's context window as its backends report it, if they do."""
        return self._pool.context_length(model)

    async def count(self, ctx: RequestContext) -> int:
        if ctx.prompt_tokens is None:
            ctx.prompt_tokens = await self._count(ctx)
        return ctx.prompt_tokens

    async def _count(self, ctx: RequestContext) -> int:
        body = ctx.body
        if ctx.route == "chat":
            counted = await self._cached(ctx, {"model": ctx.model, "messages": body["messages"]})
            return counted if counted is not None else estimate(body)
        # Embedding inputs go as prompts: vLLM tokenizes them alike.
        prompts = body.get("prompt") if ctx.route == "completions" else body.get("input")
        if isinstance(prompts, str):
            prompts = [prompts]
        if (ctx.route not in ("completions", "embeddings") or not isinstance(prompts, list)
                or not 0 < len(prompts) <= MAX_ITEMS
                or not all(isinstance(p, str) for p in prompts)):
            return estimate(body)  # token ids are counted exactly by the estimate
        counts = await asyncio.gather(*(
            self._cached(ctx, {"model": ctx.model, "prompt": prompt}) for prompt in prompts))
        return sum(count if count is not None else estimate({"prompt": prompt})
                   for count, prompt in zip(counts, prompts, strict=True))

    async def _cached(self, ctx: RequestContext, payload: dict[str, Any]) -> int | None:
        """The backend's count for one /tokenize payload; None when it has none."""
        raw = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)
        key = hashlib.blake2b(raw, digest_size=16).digest()
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        count = await self._tokenize(ctx, raw)
        if count is None:
            return None
        self._cache[key] = count
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return count

    async def _tokenize(self, ctx: RequestContext, raw: bytes) -> int | None:
        try:
            backend = self._pool.pick(ctx.model)
        except Exception:
            return None
        if backend.url in self._no_tokenize:
            return None
        try:
            async with asyncio.timeout(self._timeout_s):
                resp = await self._http.post(f"{backend.url}/tokenize", raw,
                                             {**ctx.upstream_headers(),
                                              **self._pool.auth_headers})
                try:
                    if resp.status == 404:
                        self._no_tokenize.add(backend.url)
                        return None
                    if resp.status != 200:  # a redirect too: never followed
                        return None
                    count = orjson.loads(await read_bounded(resp, SMALL_BODY_BYTES)).get(
                        "count")
                finally:
                    resp.release()
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError, AttributeError,
                BodyTooLarge):
            log.debug("tokenize failed on %s; using the estimate", backend.name)
            return None
        return count if type(count) is int else None
