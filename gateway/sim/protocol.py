"""Requests as vLLM's OpenAI server reads them, and the errors it answers with.

Defaults follow vLLM: a chat request without `max_tokens`/`max_completion_tokens` may
use the rest of the context (`max_model_len - prompt_tokens`) and ends naturally; a
completion request defaults to `max_tokens=16`. A request without `model` gets the first
served model. Logprobs are checked as vLLM checks them (completions `logprobs` 0..20;
chat `logprobs` a boolean and `top_logprobs` 0..20, which needs `logprobs: true`) and
answered for every model (job.py). Sampling knobs (temperature, top_p, penalties, ...)
are checked against vLLM's ranges and otherwise ignored. Every refusal is a `SimError`
whose body has vLLM's shape: `{"error": {"message", "type", "param", "code"}}` with the
integer status as code.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import orjson

from gateway.sim.generate import Limits
from gateway.sim.settings import SimSettings
from gateway.sim.tokenizer import Tokenizer, content_text, render_chat

MAX_N = 128
MAX_LOGPROBS = 20  # vLLM's default --max-logprobs
COMPLETION_MAX_TOKENS = 16  # vLLM's default for /v1/completions


class SimError(Exception):
    """A refusal: HTTP status, message, and the offending parameter if there is one."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": error_type(self.status),
                          "param": self.param, "code": self.status}}


def error_type(status: int) -> str:
    """vLLM names the type after the status: BadRequestError, NotFoundError, ..."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Internal Server Error" if status >= 500 else "Bad Request"
    name = "".join(word.capitalize() for word in re.split(r"[^A-Za-z]+", phrase))
    return name if name.endswith("Error") else name + "Error"


@dataclass(frozen=True, slots=True)
class Prompt:
    text: str
    tokens: int


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    """A validated /v1/chat/completions or /v1/completions request."""

    chat: bool
    model: str
    prompts: tuple[Prompt, ...]
    n: int
    stream: bool
    include_usage: bool
    continuous_usage: bool
    max_tokens: int | None  # as asked; None: up to the context length
    min_tokens: int
    ignore_eos: bool
    stop: tuple[str, ...]
    include_stop: bool
    seed: int
    logprobs: int | None = None  # top alternatives per token; None: no logprobs asked

    def limits(self, prompt: Prompt, max_model_len: int) -> Limits:
        room = max_model_len - prompt.tokens
        return Limits(max_tokens=room if self.max_tokens is None else self.max_tokens,
                      min_tokens=self.min_tokens, ignore_eos=self.ignore_eos, stop=self.stop,
                      include_stop=self.include_stop)


def parse_json(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise SimError(400, f"JSON decode error: {exc}") from None
    if not isinstance(body, dict):
        raise SimError(400, "Input should be a valid dictionary (the request body)")
    return body


def model_of(body: Mapping[str, Any], settings: SimSettings) -> str:
    model = body.get("model")
    if model is None or model == "":
        return settings.served[0]
    if not isinstance(model, str) or model not in settings.served:
        raise SimError(404, f"The model `{model}` does not exist.", "model")
    return model


def fault_text(body: Mapping[str, Any], chat: bool) -> str:
    """Where fault directives are read: the last user message, or the completion prompt."""
    if chat:
        messages = body.get("messages")
        users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"] \
            if isinstance(messages, list) else []
        return content_text(users[-1].get("content")) if users else ""
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        return "\n".join(p for p in prompt if isinstance(p, str))
    return prompt if isinstance(prompt, str) else ""


def parse_generate(body: Mapping[str, Any], chat: bool, settings: SimSettings,
                   tokenizer: Tokenizer) -> GenerateRequest:
    model = model_of(body, settings)
    prompts = (chat_prompt(body, tokenizer),) if chat else completion_prompts(body, tokenizer)
    stream = _bool(body, "stream")
    options = body.get("stream_options")
    if options is not None and not stream:
        raise SimError(400, "Stream options can only be defined when `stream=True`.",
                       "stream_options")
    if options is not None and not isinstance(options, dict):
        raise SimError(400, "stream_options must be an object", "stream_options")
    options = options or {}
    default = None if chat else COMPLETION_MAX_TOKENS
    max_tokens = (_int(body, "max_completion_tokens", None, 1) if chat else None) \
        or _int(body, "max_tokens", default, 1)
    min_tokens = _int(body, "min_tokens", 0, 0) or 0
    if max_tokens is not None and min_tokens > max_tokens:
        raise SimError(400, f"min_tokens must be less than or equal to max_tokens={max_tokens}"
                            f", got {min_tokens}.", "min_tokens")
    for prompt in prompts:
        check_context(prompt.tokens, max_tokens, settings.max_model_len)
    check_sampling(body)
    seed = _int(body, "seed", None, -(1 << 63))
    return GenerateRequest(
        chat=chat, model=model, prompts=prompts, n=_int(body, "n", 1, 1, MAX_N) or 1,
        stream=stream, include_usage=stream and _bool(options, "include_usage"),
        continuous_usage=stream and _bool(options, "include_usage")
        and _bool(options, "continuous_usage_stats"),
        max_tokens=max_tokens, min_tokens=min_tokens, ignore_eos=_bool(body, "ignore_eos"),
        stop=_stops(body.get("stop")),
        include_stop=_bool(body, "include_stop_str_in_output"),
        seed=settings.seed if seed is None else seed, logprobs=_logprobs(body, chat))


def _logprobs(body: Mapping[str, Any], chat: bool) -> int | None:
    """How many top alternatives per token, or None when no logprobs are asked."""
    key = "top_logprobs" if chat else "logprobs"
    top = _int(body, key, None, 0)
    if top is not None and top > MAX_LOGPROBS:
        raise SimError(400, f"Requested sample logprobs of {top}, which is greater than max "
                            f"allowed: {MAX_LOGPROBS}", key)
    if not chat:
        return top
    if not _bool(body, "logprobs"):
        if top:
            raise SimError(400, "when using `top_logprobs`, `logprobs` must be set to true.",
                           "top_logprobs")
        return None
    return top or 0


def chat_prompt(body: Mapping[str, Any], tokenizer: Tokenizer) -> Prompt:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise SimError(400, "messages: a non-empty list of messages is required", "messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise SimError(400, f"messages[{i}]: an object with a string role is required",
                           "messages")
    text = render_chat(messages, _bool(body, "add_generation_prompt", True))
    return Prompt(text, tokenizer.count(text))


def text_inputs(value: Any, field: str, tokenizer: Tokenizer) -> list[Prompt]:
    """`prompt` or `input`: a string, a list of strings, token ids, or a list of those."""
    error = SimError(400, f"{field}: a string, a list of strings or token ids is required",
                     field)
    if isinstance(value, str) or (isinstance(value, list) and value
                                  and all(type(t) is int for t in value)):
        value = [value]
    if not isinstance(value, list) or not value:
        raise error
    out = []
    for item in value:
        if isinstance(item, str):
            out.append(Prompt(item, tokenizer.count(item)))
        elif isinstance(item, list) and all(type(t) is int for t in item):
            out.append(Prompt(decode(item, tokenizer), len(item)))
        else:
            raise error
    return out


def completion_prompts(body: Mapping[str, Any], tokenizer: Tokenizer) -> tuple[Prompt, ...]:
    out = text_inputs(body.get("prompt"), "prompt", tokenizer)
    if any(p.tokens == 0 for p in out):
        raise SimError(400, "The decoder prompt cannot be empty", "prompt")
    return tuple(out)


def check_context(prompt_tokens: int, max_tokens: int | None, max_model_len: int) -> None:
    if max_tokens is None and prompt_tokens >= max_model_len:
        raise SimError(400, f"This model's maximum context length is {max_model_len} tokens. "
                            f"However, your request has {prompt_tokens} input tokens. Please "
                            f"reduce the length of the input messages. "
                            f"(parameter=input_tokens, value={prompt_tokens})", "input_tokens")
    if max_tokens is not None and prompt_tokens + max_tokens > max_model_len:
        raise SimError(400, f"This model's maximum context length is {max_model_len} tokens. "
                            f"However, you requested {max_tokens} output tokens and your prompt "
                            f"contains {prompt_tokens} input tokens, for a total of "
                            f"{prompt_tokens + max_tokens} tokens. Please reduce the length of "
                            f"the input prompt or the number of requested output tokens. "
                            f"(parameter=input_tokens, value={prompt_tokens})", "input_tokens")


def decode(tokens: list[int], tokenizer: Tokenizer) -> str:
    try:
        return tokenizer.decode(tokens)
    except ValueError as exc:
        raise SimError(400, str(exc), "tokens") from None


# vLLM's SamplingParams checks, in its words: (key, accepts, what it must be)
_SAMPLING: tuple[tuple[str, Callable[[float], bool], str], ...] = (
    ("temperature", lambda v: v >= 0, "must be non-negative"),
    ("top_p", lambda v: 0 < v <= 1, "must be in (0, 1]"),
    ("top_k", lambda v: v >= -1, "must be 0 (disable), or at least 1"),
    ("min_p", lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    ("presence_penalty", lambda v: -2 <= v <= 2, "must be in [-2, 2]"),
    ("frequency_penalty", lambda v: -2 <= v <= 2, "must be in [-2, 2]"),
    ("repetition_penalty", lambda v: v > 0, "must be greater than zero"),
)


def check_sampling(body: Mapping[str, Any]) -> None:
    """Refuse sampling knobs out of vLLM's ranges, as vLLM does: 400 before any output,
    for streams too. The values are otherwise ignored (generation is deterministic)."""
    for key, accepts, rule in _SAMPLING:
        value = body.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SimError(400, f"{key}: a number is required", key)
        if not accepts(value):
            shown = float(value) if key != "top_k" else value
            raise SimError(400, f"{key} {rule}, got {shown}. (parameter={key}, "
                                f"value={shown})", key)


def _bool(body: Mapping[str, Any], key: str, default: bool = False) -> bool:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise SimError(400, f"{key}: a boolean is required", key)
    return value


def _int(body: Mapping[str, Any], key: str, default: int | None, low: int,
         high: int = 1 << 63) -> int | None:
    value = body.get(key)
    if value is None:
        return default
    if type(value) is not int:
        raise SimError(400, f"{key}: an integer is required", key)
    if value < low:
        raise SimError(400, f"{key} must be at least {low}, got {value}.", key)
    if value > high:
        raise SimError(400, f"{key} must be at most {high}, got {value}.", key)
    return value


def _stops(stop: Any) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise SimError(400, "stop: a string or a list of strings is required", "stop")
    return tuple(s for s in stops if s)
