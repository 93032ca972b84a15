"""The simulator's HTTP surface: vLLM's OpenAI server, as the gateway sees it."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import math
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from gateway.sim.generate import Faults, natural_length, parse_faults, words
from gateway.sim.metrics import SimMetrics
from gateway.sim.settings import SimSettings
from gateway.sim.tokenizer import Tokenizer, render_chat


@dataclass(slots=True)
class SimStats:
    requests: int = 0
    completed: int = 0
    aborted: int = 0
    in_flight: int = 0


SIM_SETTINGS: web.AppKey[SimSettings] = web.AppKey("sim_settings")
SIM_STATS: web.AppKey[SimStats] = web.AppKey("sim_stats")
SIM_METRICS: web.AppKey[SimMetrics] = web.AppKey("sim_metrics")
TOKENIZER: web.AppKey[Tokenizer] = web.AppKey("sim_tokenizer")

_ERROR_TYPES = {400: "BadRequestError", 404: "NotFoundError", 429: "RateLimitError",
                500: "InternalServerError", 503: "ServiceUnavailableError"}


class SimError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param

    def response(self) -> web.Response:
        body = {"error": {"message": self.message,
                          "type": _ERROR_TYPES.get(self.status, "InternalServerError"),
                          "param": self.param, "code": self.status}}
        return web.json_response(body, status=self.status, dumps=_dumps)


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


@dataclass(slots=True)
class Choice:
    index: int
    tokens: list[str]
    finish_reason: str


@dataclass(slots=True)
class Job:
    kind: str  # "chat" | "completions"
    model: str
    stream: bool
    include_usage: bool
    prompt_tokens: int
    choices: list[Choice]
    faults: Faults
    created: int
    id: str


def _plan(prompt: str, seed: int, index: int, max_tokens: int | None, ignore_eos: bool,
          stop: list[str]) -> Choice:
    limit = natural_length(prompt, seed, index)
    reason = "stop"
    if max_tokens is not None and (ignore_eos or max_tokens < limit):
        limit, reason = max_tokens, "length"
    text, out = "", []
    for token in itertools.islice(words(prompt, seed, index), limit):
        candidate = text + token
        hits = [p for s in stop if (p := candidate.find(s, max(0, len(text) - len(s)))) >= 0]
        if hits:
            if min(hits) > len(text):
                out.append(candidate[len(text):min(hits)])
            return Choice(index, out, "stop")
        out.append(token)
        text = candidate
    return Choice(index, out, reason)


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise SimError(400, "Invalid JSON body") from None
    if not isinstance(body, dict):
        raise SimError(400, "Request body must be a JSON object")
    return body


def _prompts(kind: str, body: dict[str, Any]) -> list[str]:
    if kind == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise SimError(400, "messages must be a non-empty list", "messages")
        return [render_chat(messages)]
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return prompt
    if isinstance(prompt, list) and prompt and all(type(p) is int for p in prompt):
        return [" ".join(map(str, prompt))]
    raise SimError(400, "prompt must be a string or a list", "prompt")


def _job(app: web.Application, kind: str, body: dict[str, Any], header: str) -> Job:
    settings, tokenizer = app[SIM_SETTINGS], app[TOKENIZER]
    model = body.get("model")
    if model not in settings.models:
        raise SimError(404, f"The model `{model}` does not exist.", "model")
    prompts = _prompts(kind, body)
    stream = body.get("stream") is True
    if body.get("stream_options") is not None and not stream:
        raise SimError(400, "Stream options can only be defined when `stream=True`.",
                       "stream_options")
    prompt_tokens = sum(len(tokenizer.encode(p)) for p in prompts)
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens is not None and prompt_tokens + int(max_tokens) > settings.max_model_len:
        raise SimError(400, f"This model's maximum context length is {settings.max_model_len}"
                       f" tokens. However, you requested {prompt_tokens + int(max_tokens)}.")
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else list(stop)
    seed: int = body["seed"] if isinstance(body.get("seed"), int) else settings.seed
    n = int(body.get("n") or 1)
    limit = max_tokens if max_tokens is not None else settings.max_model_len - prompt_tokens
    choices = [_plan(p, seed, i * n + j, limit, bool(body.get("ignore_eos")), stop)
               for i, p in enumerate(prompts) for j in range(n)]
    options = body.get("stream_options") or {}
    prefix = "chatcmpl" if kind == "chat" else "cmpl"
    return Job(kind=kind, model=model, stream=stream,
               include_usage=bool(options.get("include_usage")), prompt_tokens=prompt_tokens,
               choices=choices, faults=parse_faults(*prompts, header), created=int(time.time()),
               id=f"{prefix}-{uuid.uuid4().hex}")


def _usage(job: Job) -> dict[str, int]:
    completion = sum(len(c.tokens) for c in job.choices)
    return {"prompt_tokens": job.prompt_tokens, "completion_tokens": completion,
            "total_tokens": job.prompt_tokens + completion}


def _whole(job: Job) -> dict[str, Any]:
    if job.kind == "chat":
        choices: list[dict[str, Any]] = [
            {"index": c.index, "message": {"role": "assistant", "content": "".join(c.tokens),
                                           "tool_calls": []},
             "logprobs": None, "finish_reason": c.finish_reason, "stop_reason": None}
            for c in job.choices]
        obj = "chat.completion"
    else:
        choices = [{"index": c.index, "text": "".join(c.tokens), "logprobs": None,
                    "finish_reason": c.finish_reason, "stop_reason": None} for c in job.choices]
        obj = "text_completion"
    return {"id": job.id, "object": obj, "created": job.created, "model": job.model,
            "choices": choices, "usage": _usage(job)}


def _chunk(job: Job, choice: Choice, text: str | None, finish: str | None) -> bytes:
    if job.kind == "chat":
        delta = {"role": "assistant", "content": ""} if text is None else {"content": text}
        entry: dict[str, Any] = {"index": choice.index, "delta": delta, "logprobs": None,
                                 "finish_reason": finish}
        obj = "chat.completion.chunk"
    else:
        entry = {"index": choice.index, "text": text or "", "logprobs": None,
                 "finish_reason": finish, "stop_reason": None}
        obj = "text_completion"
    event = {"id": job.id, "object": obj, "created": job.created, "model": job.model,
             "choices": [entry]}
    return b"data: " + orjson.dumps(event) + b"\n\n"


async def _sleep(request: web.Request, seconds: float) -> None:
    """Sleep, noticing promptly when the client has gone away."""
    deadline = time.monotonic() + seconds
    while True:
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("client went away")
        left = deadline - time.monotonic()
        if left <= 0:
            return
        await asyncio.sleep(min(left, 0.05))


def _close(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.abort()
    raise ConnectionResetError("simulated connection drop")


async def _stream(request: web.Request, job: Job, tps: float) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                       "Cache-Control": "no-cache"})
    await resp.prepare(request)
    metrics = request.app[SIM_METRICS]
    if job.kind == "chat":
        await resp.write(b"".join(_chunk(job, c, None, None) for c in job.choices))
    faults = job.faults
    longest = max((len(c.tokens) for c in job.choices), default=0)
    started = last = time.monotonic()
    for step in range(max(longest, 1)):
        sent = step  # token chunks already sent
        if step and tps > 0:
            await _sleep(request, 1 / tps)
        if sent == faults.drop_after:
            _close(request)
        if sent == faults.stall_after:
            await _sleep(request, 3600)
        if sent == faults.malformed_after:
            await resp.write(b"data: {not json\n\n")
        out = []
        for c in job.choices:
            if step < len(c.tokens) or (step == 0 and not c.tokens):
                finish = c.finish_reason if step >= len(c.tokens) - 1 else None
                out.append(_chunk(job, c, c.tokens[step] if c.tokens else "", finish))
        await resp.write(b"".join(out))
        now = time.monotonic()
        (metrics.ttft if step == 0 else metrics.itl).labels(job.model).observe(
            now - (started if step == 0 else last))
        last = now
    if job.include_usage:
        kind = "chat.completion.chunk" if job.kind == "chat" else "text_completion"
        usage: dict[str, Any] = {"id": job.id, "object": kind, "created": job.created,
                                 "model": job.model, "choices": [], "usage": _usage(job)}
        await resp.write(b"data: " + orjson.dumps(usage) + b"\n\n")
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


async def _generate(request: web.Request, kind: str) -> web.StreamResponse:
    app = request.app
    stats, metrics, settings = app[SIM_STATS], app[SIM_METRICS], app[SIM_SETTINGS]
    try:
        job = _job(app, kind, await _body(request), request.headers.get("x-sim-fault", ""))
    except SimError as exc:
        return exc.response()
    if job.faults.reset:
        with contextlib.suppress(ConnectionResetError):
            _close(request)
        return web.Response(status=499)
    if job.faults.status is not None:
        return SimError(job.faults.status, "simulated upstream failure").response()
    stats.requests += 1
    stats.in_flight += 1
    running = metrics.running.labels(job.model)
    running.inc()
    started = time.monotonic()
    reason = "abort"
    try:
        await _sleep(request, job.faults.ttft_s if job.faults.ttft_s is not None
                     else settings.ttft_s)
        tps = job.faults.tps if job.faults.tps is not None else settings.tokens_per_second
        if job.stream:
            response = await _stream(request, job, tps)
        else:
            if tps > 0:
                await _sleep(request, sum(len(c.tokens) for c in job.choices) / tps)
            response = web.json_response(_whole(job), dumps=_dumps)
        reason = job.choices[0].finish_reason if job.choices else "stop"
        return response
    except ConnectionResetError:
        # The client went away (or a fault dropped it): nothing more can be sent.
        return web.Response(status=499)
    finally:
        stats.in_flight -= 1
        running.dec()
        if reason == "abort":
            stats.aborted += 1
        else:
            stats.completed += 1
            metrics.prompt_tokens.labels(job.model).inc(job.prompt_tokens)
            metrics.generation_tokens.labels(job.model).inc(_usage(job)["completion_tokens"])
            metrics.e2e.labels(job.model).observe(time.monotonic() - started)
        metrics.success.labels(job.model, reason).inc()


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, "chat")


async def completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, "completions")


async def embeddings(request: web.Request) -> web.Response:
    settings, tokenizer = request.app[SIM_SETTINGS], request.app[TOKENIZER]
    try:
        body = await _body(request)
        if body.get("model") not in settings.models:
            raise SimError(404, f"The model `{body.get('model')}` does not exist.", "model")
        inputs = body.get("input")
        inputs = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(inputs, list) or not inputs:
            raise SimError(400, "input must be a string or a non-empty list", "input")
    except SimError as exc:
        return exc.response()
    data = [{"object": "embedding", "index": i, "embedding": _vector(str(text))}
            for i, text in enumerate(inputs)]
    tokens = sum(len(tokenizer.encode(str(t))) for t in inputs)
    return web.json_response({"object": "list", "data": data, "model": body["model"],
                              "usage": {"prompt_tokens": tokens, "total_tokens": tokens}},
                             dumps=_dumps)


def _vector(text: str, dim: int = 384) -> list[float]:
    seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")
    rng = random.Random(seed)
    values = [rng.gauss(0, 1) for _ in range(dim)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


async def tokenize(request: web.Request) -> web.Response:
    settings, tokenizer = request.app[SIM_SETTINGS], request.app[TOKENIZER]
    try:
        body = await _body(request)
        if body.get("model") not in settings.models:
            raise SimError(404, f"The model `{body.get('model')}` does not exist.", "model")
        if "messages" in body:
            text = _prompts("chat", body)[0]
        elif isinstance(body.get("prompt"), str):
            text = body["prompt"]
        else:
            raise SimError(400, "either prompt or messages is required")
    except SimError as exc:
        return exc.response()
    tokens = tokenizer.encode(text)
    return web.json_response({"count": len(tokens), "max_model_len": settings.max_model_len,
                              "tokens": tokens, "token_strs": None})


async def detokenize(request: web.Request) -> web.Response:
    try:
        body = await _body(request)
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or not all(type(t) is int for t in tokens):
            raise SimError(400, "tokens must be a list of integers", "tokens")
    except SimError as exc:
        return exc.response()
    return web.json_response({"prompt": request.app[TOKENIZER].decode(tokens)})


async def models(request: web.Request) -> web.Response:
    settings = request.app[SIM_SETTINGS]
    data: list[dict[str, Any]] = [
        {"id": m, "object": "model", "created": 0, "owned_by": "vllm", "root": m,
         "parent": None, "max_model_len": settings.max_model_len, "permission": []}
        for m in settings.models]
    return web.json_response({"object": "list", "data": data})


async def health(request: web.Request) -> web.Response:
    return web.Response()


async def version(request: web.Request) -> web.Response:
    return web.json_response({"version": "0.0.0-gateway-sim"})


async def metrics(request: web.Request) -> web.Response:
    text = generate_latest(request.app[SIM_METRICS].registry)
    return web.Response(body=text, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def stats(request: web.Request) -> web.Response:
    s = request.app[SIM_STATS]
    return web.json_response({"requests": s.requests, "completed": s.completed,
                              "aborted": s.aborted, "in_flight": s.in_flight})


def create_sim_app(settings: SimSettings) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[SIM_SETTINGS] = settings
    app[SIM_STATS] = SimStats()
    app[SIM_METRICS] = SimMetrics(CollectorRegistry())
    app[TOKENIZER] = Tokenizer()
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_post("/tokenize", tokenize)
    app.router.add_post("/detokenize", detokenize)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/version", version)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/sim/stats", stats)
    return app


async def run_sim(settings: SimSettings, host: str, port: int) -> None:
    runner = web.AppRunner(create_sim_app(settings), handler_cancellation=True,
                           access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=2048).start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
