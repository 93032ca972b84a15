"""Shape stage: what a request may carry, before anything else looks at it.

Each endpoint has an allow-list of fields; anything else is dropped, including the vLLM
extras that would let a client reach around the gateway (chat templates, logits
processors, scheduling priority, KV transfer, request ids, raw vllm_xargs, watermarking
switches). Later stages may set some of those from policy. Type checks here turn a
client's mistake into a 400 naming the field, never a 500 further down. In chat text,
chat-template control tokens are neutralised and unknown message keys dropped
(control.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.context import RequestContext, Route
from gateway.errors import BadRequest
from gateway.pipeline import ALLOW, Decision, deny
from gateway.pipeline.shape.control import neutralise_chat
from gateway.pipeline.watermark.strip import strip_marks_from_messages

_SAMPLING = frozenset({
    "frequency_penalty", "presence_penalty", "logit_bias", "logprobs", "max_tokens", "n",
    "seed", "stop", "stream", "stream_options", "temperature", "top_p", "user",
    # vLLM sampling extras that change only how tokens are drawn
    "top_k", "min_p", "repetition_penalty", "length_penalty", "min_tokens",
    "stop_token_ids", "ignore_eos", "skip_special_tokens", "spaces_between_special_tokens",
    "include_stop_str_in_output", "truncate_prompt_tokens", "bad_words",
    "response_format", "structured_outputs", "guided_json", "guided_regex",
    "guided_choice", "guided_grammar",
})

ALLOWED_FIELDS: dict[Route, frozenset[str]] = {
    "chat": _SAMPLING | {
        "model", "messages", "max_completion_tokens", "top_logprobs", "tools",
        "tool_choice", "parallel_tool_calls", "reasoning_effort", "metadata", "store",
    },
    "completions": _SAMPLING | {"model", "prompt", "best_of", "echo", "suffix"},
    "embeddings": frozenset({"model", "input", "encoding_format", "dimensions", "user"}),
}

# Never forwarded from a client, whatever an allow-list says; listed for documentation
# and for the test that proves each one is removed.
REACH_AROUND_FIELDS = frozenset({
    "chat_template", "chat_template_kwargs", "logits_processors", "priority", "request_id",
    "kv_transfer_params", "vllm_xargs", "watermarking",
})

_STREAM_OPTIONS = frozenset({"include_usage"})
MAX_N = 16
MAX_MODEL_CHARS = 256  # model ids are paths or repo names: far shorter


def _bad(message: str, param: str) -> Decision:
    return deny(BadRequest(message, param=param, code="invalid_value"), "invalid")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return type(value) is int


# Typed optional fields (null is always allowed: "the default"). A tier's caps compare
# numbers, and vLLM coerces "99" or true into 99.0 or 1.0, so a wrong type is refused here
# rather than slipping past a cap.
# Ranges are vLLM's (every backend refuses values outside them): a 400 here, before the
# tier compares its own narrower bounds (403), whatever the caller's tier.
_TYPED: dict[str, tuple[Callable[[Any], bool], str]] = {
    "temperature": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "top_p": (lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "min_p": (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "repetition_penalty": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    **{key: (lambda v: _is_number(v) and -2 <= v <= 2, "a number in [-2, 2]")
       for key in ("frequency_penalty", "presence_penalty")},
    "length_penalty": (_is_number, "a number"),
    **{key: (_is_int, "an integer") for key in ("seed", "top_k", "min_tokens")},
    "top_logprobs": (lambda v: _is_int(v) and 0 <= v <= 20, "an integer from 0 to 20"),
    "best_of": (lambda v: _is_int(v) and 1 <= v <= MAX_N, f"an integer from 1 to {MAX_N}"),
    "echo": (lambda v: isinstance(v, bool), "a boolean"),
    "ignore_eos": (lambda v: isinstance(v, bool), "a boolean"),
    "parallel_tool_calls": (lambda v: isinstance(v, bool), "a boolean"),
    "suffix": (lambda v: isinstance(v, str), "a string"),
    "user": (lambda v: isinstance(v, str), "a string"),
    "logit_bias": (lambda v: isinstance(v, dict) and all(_is_number(b) for b in v.values()),
                   "an object of numbers"),
    "response_format": (lambda v: isinstance(v, dict), "an object"),
    "tools": (lambda v: isinstance(v, list), "a list"),
    "tool_choice": (lambda v: isinstance(v, str | dict), "a string or an object"),
}
# `logprobs` is a flag in chat and a count in completions.
_LOGPROBS: dict[Route, tuple[Callable[[Any], bool], str]] = {
    "chat": (lambda v: isinstance(v, bool), "a boolean"),
    "completions": (lambda v: _is_int(v) and 0 <= v <= 20, "an integer from 0 to 20"),
}


def _check_types(body: dict[str, Any], route: Route) -> Decision:
    for key, value in body.items():
        rule = _LOGPROBS.get(route) if key == "logprobs" else _TYPED.get(key)
        if rule is not None and value is not None and not rule[0](value):
            return _bad(f"'{key}' must be {rule[1]}", key)
    return ALLOW


def _check_common(body: dict[str, Any]) -> Decision:
    if not isinstance(body.get("model"), str) or not body["model"]:
        return _bad("'model' must be a non-empty string", "model")
    if len(body["model"]) > MAX_MODEL_CHARS:  # it goes into every log line and audit record
        return _bad(f"'model' must be at most {MAX_MODEL_CHARS} characters", "model")
    if body.get("stream") is not None and not isinstance(body["stream"], bool):
        return _bad("'stream' must be a boolean", "stream")
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if value is not None and (type(value) is not int or value < 1):
            return _bad(f"'{key}' must be a positive integer", key)
    n = body.get("n")
    if n is not None and (type(n) is not int or not 1 <= n <= MAX_N):
        return _bad(f"'n' must be an integer between 1 and {MAX_N}", "n")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        return _bad("'stream_options' must be an object", "stream_options")
    usage = options.get("include_usage") if options is not None else None
    if usage is not None and not isinstance(usage, bool):
        return _bad("'stream_options.include_usage' must be a boolean",
                    "stream_options.include_usage")
    stop = body.get("stop")
    if stop is not None and not isinstance(stop, str) and not (
            isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        return _bad("'stop' must be a string or a list of strings", "stop")
    return ALLOW


# Content part types vLLM reads as text, and the key that holds it: the classifiers must
# read every one of them, or text in an `input_text` part would reach the model unjudged.
TEXT_PART_KEYS = {"text": "text", "input_text": "text", "output_text": "text",
                  "refusal": "refusal", "thinking": "thinking"}
# The other part types vLLM accepts (media; no text of their own), by the kind a tier names
# (tier/media.py). vLLM refuses any other type, so the gateway does as well, before
# anything else looks at the request.
MEDIA_KINDS = {"image_url": "image", "input_image": "image", "image_embeds": "embeds",
               "audio_url": "audio", "input_audio": "audio", "video_url": "video",
               "file": "file"}
MEDIA_PART_TYPES = frozenset(MEDIA_KINDS)
# The media parts fetched by URL, and the key that holds it ({"url": ...} or the URL).
URL_KEYS = {"image_url": "image_url", "input_image": "image_url", "audio_url": "audio_url",
            "video_url": "video_url"}


def media_url(part: dict[str, Any]) -> str | None:
    """The URL a media part asks vLLM to fetch, or None (an inline part, or no string)."""
    key = URL_KEYS.get(part["type"])
    value = part.get(key) if key is not None else None
    if isinstance(value, dict):
        value = value.get("url")
    return value if isinstance(value, str) else None


def part_text(part: Any) -> str | None:
    """The text of a text-like content part, None for any other part. Safe on anything:
    the audit record reads bodies the shape stage refused."""
    kind = part.get("type") if isinstance(part, dict) else None
    key = TEXT_PART_KEYS.get(kind) if isinstance(kind, str) else None
    if key is not None and isinstance(part.get(key), str):
        return str(part[key])
    return None


# OpenAI's roles. vLLM also takes any other role string for custom chat templates, but an
# unknown role is text the classifier (which reads configured roles) would never see.
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


def _check_messages(messages: Any) -> Decision:
    if not isinstance(messages, list) or not messages:
        return _bad("'messages' must be a non-empty array", "messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            return _bad(f"'messages[{i}]' must be an object with a string 'role'",
                        f"messages[{i}]")
        if message["role"] not in ROLES:
            return _bad(f"'messages[{i}].role' must be one of {', '.join(sorted(ROLES))}",
                        f"messages[{i}].role")
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            return _bad(f"'messages[{i}].content' must be a string or an array",
                        f"messages[{i}].content")
        if isinstance(content, list):
            for j, part in enumerate(content):
                if not _valid_part(part):
                    return _bad(f"'messages[{i}].content[{j}]' must be a text part "
                                f"({', '.join(sorted(TEXT_PART_KEYS))}) with its text as "
                                f"a string, or a media part (with its URL as a string)",
                                f"messages[{i}].content[{j}]")
    return ALLOW


def _valid_part(part: Any) -> bool:
    """A text part with its text, or a media part (with its URL, where fetched by one: the
    tier stage checks where it points)."""
    if not isinstance(part, dict) or not isinstance(part.get("type"), str):
        return False
    if part["type"] in URL_KEYS:
        return media_url(part) is not None
    return part["type"] in MEDIA_PART_TYPES or part_text(part) is not None


def _token_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(type(t) is int for t in value)


def generations(body: dict[str, Any]) -> int:
    """Sequences one shaped request makes the backend generate: n (or best_of, which
    generates that many to return n) for each prompt of a completions prompt array."""
    prompt = body.get("prompt")
    prompts = len(prompt) if isinstance(prompt, list) and not _token_ids(prompt) else 1
    return prompts * max(int(body.get("n") or 1), int(body.get("best_of") or 1))


def completion_bound(body: dict[str, Any]) -> int | None:
    """The most completion tokens one shaped request can make the backend generate: its
    max tokens (vLLM reads max_completion_tokens first) for each of its generations; None
    when it names no max (the tier stage sets its default where it has one)."""
    most = body.get("max_completion_tokens") or body.get("max_tokens")
    return int(most) * generations(body) if most else None


def _check_prompt(prompt: Any) -> Decision:
    """OpenAI's four forms: a string, strings, token ids, or lists of token ids."""
    if isinstance(prompt, str):
        return ALLOW
    if isinstance(prompt, list) and prompt and (
            all(isinstance(p, str) for p in prompt) or _token_ids(prompt)
            or all(_token_ids(p) for p in prompt)):
        return ALLOW
    return _bad("'prompt' must be a string, a non-empty array of strings or of token ids, "
                "or an array of token id arrays", "prompt")


def _check_input(value: Any) -> Decision:
    if isinstance(value, str) or (isinstance(value, list) and value):
        return ALLOW
    return _bad("'input' must be a string or a non-empty array", "input")


class ShapeStage:
    name = "shape"

    async def check(self, ctx: RequestContext) -> Decision:
        body = ctx.body
        decision = _check_common(body)
        if decision.allowed and ctx.route != "embeddings":
            decision = _check_types(body, ctx.route)
        if decision.allowed:
            if ctx.route == "chat":
                decision = _check_messages(body.get("messages"))
            elif ctx.route == "completions":
                decision = _check_prompt(body.get("prompt"))
            else:
                decision = _check_input(body.get("input"))
        if not decision.allowed:
            return decision
        allowed = ALLOWED_FIELDS[ctx.route]
        shaped = {k: v for k, v in body.items() if k in allowed}
        ctx.model = shaped["model"]
        ctx.stream = shaped.get("stream") is True and ctx.route != "embeddings"
        options = shaped.pop("stream_options", None) or {}
        if ctx.stream:
            # Always ask for usage so the gateway knows token counts; the relay drops the
            # usage chunk again when the client did not ask for it.
            ctx.client_wants_usage = options.get("include_usage") is True
            shaped["stream_options"] = {"include_usage": True}
        else:
            shaped.pop("stream", None)
        # Conversations echo earlier replies back: the gateway's own invisible marks are
        # removed so they never reach the model, cost tokens or skew classification.
        strip_marks_from_messages(shaped)
        if ctx.route == "chat":  # template control tokens: see control.py
            neutralise_chat(shaped, TEXT_PART_KEYS)
        ctx.body = shaped
        return ALLOW
