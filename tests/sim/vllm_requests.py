"""Requests sent both to real vLLM (vllm_check/record.py) and to the simulator
(tests/sim/test_vllm_fidelity.py), so the simulator's answers can be held against what
vLLM itself answered: the recording lives in tests/sim/vllm_recorded.json."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

MODEL = "{model}"  # replaced by the served model's name


@dataclass(frozen=True)
class Probe:
    name: str
    method: str
    path: str
    body: dict[str, Any] | None = None
    raw: str | None = None  # sent as is instead of JSON
    notes: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)

    def payload(self, model: str) -> dict[str, Any] | None:
        if self.body is None:
            return None
        return _substitute(self.body, model)


def _substitute(value: Any, model: str) -> Any:
    if value == MODEL:
        return model
    if isinstance(value, dict):
        return {k: _substitute(v, model) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, model) for v in value]
    return value


MESSAGES = [{"role": "user", "content": "Tell me about the sea"}]
CHAT = {"model": MODEL, "messages": MESSAGES, "max_tokens": 8, "seed": 1, "temperature": 0}
COMPLETION = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 8, "seed": 1,
              "temperature": 0}
USAGE = {"stream": True, "stream_options": {"include_usage": True}}
CHAT_PATH, COMPLETIONS_PATH = "/v1/chat/completions", "/v1/completions"

PROBES: tuple[Probe, ...] = (
    Probe("models", "GET", "/v1/models"),
    Probe("health", "GET", "/health"),
    Probe("chat", "POST", CHAT_PATH, CHAT),
    Probe("chat_stream", "POST", CHAT_PATH, {**CHAT, "stream": True}),
    Probe("chat_stream_usage", "POST", CHAT_PATH, {**CHAT, **USAGE}),
    Probe("chat_n2", "POST", CHAT_PATH, {**CHAT, "n": 2, "temperature": 1.0}),
    Probe("chat_n2_stream_usage", "POST", CHAT_PATH, {**CHAT, **USAGE, "n": 2,
                                                       "temperature": 1.0}),
    Probe("chat_logprobs", "POST", CHAT_PATH, {**CHAT, "logprobs": True, "top_logprobs": 2}),
    Probe("chat_logprobs_stream", "POST", CHAT_PATH, {**CHAT, **USAGE, "logprobs": True,
                                                       "top_logprobs": 2}),
    Probe("chat_stop", "POST", CHAT_PATH, {**CHAT, "max_tokens": 64, "stop": [" "]}),
    Probe("completion", "POST", COMPLETIONS_PATH, COMPLETION),
    Probe("completion_stream", "POST", COMPLETIONS_PATH, {**COMPLETION, "stream": True}),
    Probe("completion_stream_usage", "POST", COMPLETIONS_PATH, {**COMPLETION, **USAGE}),
    Probe("completion_logprobs", "POST", COMPLETIONS_PATH, {**COMPLETION, "logprobs": 2}),
    Probe("completion_prompt_list", "POST", COMPLETIONS_PATH,
          {**COMPLETION, "prompt": ["Once upon", "In the"]}),
    Probe("tokenize", "POST", "/tokenize", {"model": MODEL, "prompt": "Hello world"}),
    Probe("tokenize_chat", "POST", "/tokenize", {"model": MODEL, "messages": MESSAGES}),
    Probe("detokenize", "POST", "/detokenize", {"model": MODEL, "tokens": [300, 301, 302]}),
    # errors
    Probe("err_unknown_model", "POST", CHAT_PATH, {**CHAT, "model": "no-such-model"},
          tags=("error",)),
    Probe("err_bad_json", "POST", CHAT_PATH, raw="{not json", tags=("error",)),
    Probe("err_missing_messages", "POST", CHAT_PATH, {"model": MODEL, "max_tokens": 4},
          tags=("error",)),
    Probe("err_messages_type", "POST", CHAT_PATH, {**CHAT, "messages": "hello"},
          tags=("error",)),
    Probe("err_temperature", "POST", CHAT_PATH, {**CHAT, "temperature": -1},
          tags=("error",)),
    Probe("err_n0", "POST", CHAT_PATH, {**CHAT, "n": 0}, tags=("error",)),
    Probe("err_top_logprobs", "POST", CHAT_PATH, {**CHAT, "logprobs": True,
                                                   "top_logprobs": 50}, tags=("error",)),
    Probe("err_max_tokens_too_big", "POST", CHAT_PATH, {**CHAT, "max_tokens": 1_000_000},
          tags=("error",)),
    Probe("err_prompt_too_long", "POST", COMPLETIONS_PATH,
          {**COMPLETION, "prompt": "sea " * 20_000}, tags=("error",)),
    Probe("err_stream_temperature", "POST", CHAT_PATH, {**CHAT, "stream": True,
                                                         "temperature": -1},
          tags=("error",)),
    Probe("err_completion_no_prompt", "POST", COMPLETIONS_PATH, {"model": MODEL},
          tags=("error",)),
    Probe("err_embeddings_on_generator", "POST", "/v1/embeddings",
          {"model": MODEL, "input": "hello"}, tags=("error",)),
    Probe("err_unknown_path", "GET", "/v1/nope", tags=("error",)),
    Probe("err_wrong_method", "GET", CHAT_PATH, tags=("error",)),
)


def _events(text: str) -> list[Any]:
    out: list[Any] = []
    for block in text.split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: "):
                data = line[6:]
                out.append(data if data == "[DONE]" else json.loads(data))
    return out


async def _one(session: aiohttp.ClientSession, base: str, model: str,
               probe: Probe) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if probe.raw is not None:
        kwargs["data"] = probe.raw
        kwargs["headers"] = {"Content-Type": "application/json"}
    elif probe.body is not None:
        kwargs["json"] = probe.payload(model)
    async with session.request(probe.method, base + probe.path, **kwargs) as resp:
        text = await resp.text()
        record: dict[str, Any] = {"status": resp.status,
                                  "content_type": resp.headers.get("Content-Type", "")}
    if record["content_type"].startswith("text/event-stream"):
        record["events"] = _events(text)
        record["raw_head"] = text[:300]
    else:
        try:
            record["json"] = json.loads(text)
        except ValueError:
            record["text"] = text[:500]
    return record


async def record(base: str, model: str) -> dict[str, Any]:
    out: dict[str, Any] = {"model": model, "probes": {}}
    async with aiohttp.ClientSession() as session:
        for probe in PROBES:
            out["probes"][probe.name] = await _one(session, base, model, probe)
        async with session.get(base + "/version") as resp:
            out["version"] = (await resp.json()).get("version")
        async with session.get(base + "/metrics") as resp:
            families = text_string_to_metric_families(await resp.text())
            out["metric_families"] = sorted({f.name for f in families
                                             if f.name.startswith("vllm:")})
    return out
