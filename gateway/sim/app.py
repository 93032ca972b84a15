"""The simulator's HTTP surface: vLLM's OpenAI server, as the gateway sees it.

Routes: POST /v1/chat/completions, /v1/completions, /v1/embeddings, /tokenize,
/detokenize; GET /v1/models, /health, /version, /metrics, and /sim/stats (the
simulator's own counters, for tests that run it in another process). Unknown paths get
FastAPI's `{"detail": "Not Found"}`, as from vLLM. Guard models (SimSettings.guard_models)
are served and listed like the others, and answer as Llama Guard 3 does (guard.py); fault
directives work on them as on any model.

Counters (`SimStats`): `requests` counts generation requests accepted (valid, and not
refused by a `status` or `reset` fault); each then ends `completed`, or `aborted` when
the connection closed first (the client left, or a drop/stall fault). So
requests == completed + aborted + in_flight at every moment.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from gateway.sim.embeddings import embeddings_body
from gateway.sim.engine import ClientGone, Pace, Run, hang_up
from gateway.sim.faults import Faults, FaultSyntaxError, parse_faults
from gateway.sim.guard import Verdict, judge, judged_text, said
from gateway.sim.job import Job, plan_job
from gateway.sim.metrics import SimMetrics
from gateway.sim.prose import Prose
from gateway.sim.protocol import (
    GenerateRequest,
    SimError,
    chat_prompt,
    decode,
    fault_text,
    model_of,
    parse_generate,
    parse_json,
)
from gateway.sim.settings import VLLM_VERSION, SimSettings
from gateway.sim.tokenizer import Tokenizer


@dataclass(slots=True)
class SimStats:
    requests: int = 0
    completed: int = 0
    aborted: int = 0
    in_flight: int = 0


SIM_SETTINGS: web.AppKey[SimSettings] = web.AppKey("sim_settings", SimSettings)
SIM_STATS: web.AppKey[SimStats] = web.AppKey("sim_stats", SimStats)
SIM_METRICS: web.AppKey[SimMetrics] = web.AppKey("sim_metrics", SimMetrics)
TOKENIZER: web.AppKey[Tokenizer] = web.AppKey("sim_tokenizer", Tokenizer)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one place refusals become responses: vLLM's error body, FastAPI's 404/405."""
    try:
        return await handler(request)
    except SimError as exc:
        return _json(exc.body(), exc.status)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as exc:
        return _json({"detail": exc.reason}, exc.status)


@web.middleware
async def api_key(request: web.Request, handler: Handler) -> web.StreamResponse:
    """vLLM's --api-key: a /v1 path without the key gets its 401 and body."""
    key = request.app[SIM_SETTINGS].api_key
    if key is not None and request.path.startswith("/v1") and not secrets.compare_digest(
            request.headers.get("Authorization", "").encode(), f"Bearer {key}".encode()):
        return _json({"error": "Unauthorized"}, 401)
    return await handler(request)


async def _body(request: web.Request) -> dict[str, object]:
    return parse_json(await request.read())


async def _generate(request: web.Request, chat: bool) -> web.StreamResponse:
    app = request.app
    settings = app[SIM_SETTINGS]
    body = await _body(request)
    text = fault_text(body, chat)
    try:
        faults = parse_faults(text, request.headers.get("x-sim-fault", ""))
    except FaultSyntaxError as exc:
        raise SimError(400, str(exc)) from None
    if faults.reset:
        try:
            hang_up(request, flush=False)
        except ClientGone:
            return web.Response(status=499)  # never sent: the connection is gone
    if faults.status is not None:
        raise SimError(faults.status, f"Simulated failure (sim directive status={faults.status})")
    prose = None if faults.prose is None else Prose(faults.prose, app[TOKENIZER])
    asked = parse_generate(body, chat, settings, app[TOKENIZER])
    guard = _verdicts(asked, text, faults, app[TOKENIZER]) \
        if asked.model in settings.guard_models else []
    job = plan_job(asked, settings.max_model_len, prose, guard)
    pace = Pace(settings.ttft_s if faults.ttft_s is None else faults.ttft_s,
                settings.tokens_per_second if faults.tps is None else faults.tps)
    return await _serve(request, job, faults, pace)


def _verdicts(asked: GenerateRequest, text: str, faults: Faults,
              tokenizer: Tokenizer) -> list[tuple[Verdict, tuple[str, ...]]]:
    """A guard model's verdict and its tokens, per prompt. A chat guard judges the last
    user message (`text`), a completion guard each prompt's conversation."""
    judged = [text] if asked.chat else [judged_text(p.text) for p in asked.prompts]
    verdicts = [judge(t, faults) for t in judged]
    return [(v, said(v, tokenizer)) for v in verdicts]


async def _serve(request: web.Request, job: Job, faults: Faults,
                 pace: Pace) -> web.StreamResponse:
    """Serve an accepted job, counting it in SimStats and the metrics however it ends."""
    app = request.app
    stats = app[SIM_STATS]
    stats.requests += 1
    stats.in_flight += 1
    first = job.request.prompts[0]
    recorder = app[SIM_METRICS].start(
        job.request.model, job.prompt_tokens, job.request.n,
        job.request.limits(first, app[SIM_SETTINGS].max_model_len).max_tokens)
    run = Run(request, job, faults, pace, recorder)
    finished = False
    try:
        response = await (run.stream() if job.request.stream else run.whole())
        finished = True
        return response
    except (ClientGone, ConnectionResetError):
        return run.response or web.Response(status=499)
    finally:
        # Also reached on cancellation, when aiohttp cancels the handler of a lost client.
        stats.in_flight -= 1
        if finished:
            stats.completed += 1
            recorder.finish([c.plan.finish_reason for c in job.choices])
        else:
            stats.aborted += 1
            recorder.finish(["abort"] * len(job.choices))


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, chat=True)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, chat=False)


async def embeddings(request: web.Request) -> web.Response:
    app = request.app
    return _json(embeddings_body(await _body(request), app[SIM_SETTINGS], app[TOKENIZER]))


async def tokenize(request: web.Request) -> web.Response:
    """`{"prompt"}` or `{"messages"}` (through the chat template) to token ids."""
    settings, tokenizer = request.app[SIM_SETTINGS], request.app[TOKENIZER]
    body = await _body(request)
    model_of(body, settings)
    if "messages" in body:
        text = chat_prompt(body, tokenizer).text
    elif isinstance(body.get("prompt"), str):
        text = str(body["prompt"])
    else:
        raise SimError(400, "prompt (a string) or messages is required", "prompt")
    tokens = tokenizer.encode(text)
    strs = [tokenizer.piece_bytes(t).decode(errors="replace") for t in tokens] \
        if body.get("return_token_strs") is True else None
    return _json({"count": len(tokens), "max_model_len": settings.max_model_len,
                  "tokens": tokens, "token_strs": strs})


async def detokenize(request: web.Request) -> web.Response:
    body = await _body(request)
    model_of(body, request.app[SIM_SETTINGS])
    tokens = body.get("tokens")
    if not isinstance(tokens, list) or not all(type(t) is int for t in tokens):
        raise SimError(400, "tokens: a list of integers is required", "tokens")
    return _json({"prompt": decode(tokens, request.app[TOKENIZER])})


async def models(request: web.Request) -> web.Response:
    settings = request.app[SIM_SETTINGS]
    created = int(time.time())
    data = [{"id": m, "object": "model", "created": created, "owned_by": "vllm", "root": m,
             "parent": None, "max_model_len": settings.max_model_len,
             "permission": [{"id": f"modelperm-sim-{i}", "object": "model_permission",
                             "created": created, "allow_create_engine": False,
                             "allow_sampling": True, "allow_logprobs": True,
                             "allow_search_indices": False, "allow_view": True,
                             "allow_fine_tuning": False, "organization": "*", "group": None,
                             "is_blocking": False}]}
            for i, m in enumerate(settings.served)]
    return _json({"object": "list", "data": data})


async def health(request: web.Request) -> web.Response:
    return web.Response()


async def version(request: web.Request) -> web.Response:
    return _json({"version": VLLM_VERSION})


async def metrics(request: web.Request) -> web.Response:
    text = generate_latest(request.app[SIM_METRICS].registry)
    return web.Response(body=text, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def stats(request: web.Request) -> web.Response:
    return _json(dataclasses.asdict(request.app[SIM_STATS]))


def create_sim_app(settings: SimSettings) -> web.Application:
    if not settings.served:
        raise ValueError("the simulator needs at least one model")
    app = web.Application(middlewares=[api_key, errors], client_max_size=64 * 1024 * 1024)
    app[SIM_SETTINGS] = settings
    app[SIM_STATS] = SimStats()
    app[SIM_METRICS] = SimMetrics(CollectorRegistry(), settings.served, settings.max_model_len)
    app[TOKENIZER] = Tokenizer()
    for path, handler in (("/v1/chat/completions", chat_completions),
                          ("/v1/completions", completions), ("/v1/embeddings", embeddings),
                          ("/tokenize", tokenize), ("/detokenize", detokenize)):
        app.router.add_post(path, handler)
    for path, getter in (("/v1/models", models), ("/health", health), ("/version", version),
                         ("/metrics", metrics), ("/sim/stats", stats)):
        app.router.add_get(path, getter)
    return app


# vLLM closes a kept-alive connection after 5 s idle (uvicorn's timeout_keep_alive, from
# VLLM_HTTP_TIMEOUT_KEEP_ALIVE); so does the simulator.
VLLM_KEEPALIVE_S = 5.0


async def run_sim(settings: SimSettings, host: str, port: int) -> None:
    """Serve until cancelled (`gateway sim`)."""
    runner = web.AppRunner(create_sim_app(settings), handler_cancellation=True,
                           access_log=None, keepalive_timeout=VLLM_KEEPALIVE_S)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, backlog=2048).start()
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
