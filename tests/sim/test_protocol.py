"""Requests as vLLM validates them, and its error body."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.sim.protocol import (
    COMPLETION_MAX_TOKENS,
    GenerateRequest,
    SimError,
    error_type,
    fault_text,
    parse_generate,
    parse_json,
)
from gateway.sim.settings import SimSettings
from gateway.sim.tokenizer import Tokenizer

SETTINGS = SimSettings(models=("m1", "m2"), max_model_len=100, seed=5)
USER = [{"role": "user", "content": "hi"}]


def _chat(**body: Any) -> dict[str, Any]:
    return {"model": "m1", "messages": USER, **body}


def _parse(body: dict[str, Any], chat: bool = True) -> GenerateRequest:
    return parse_generate(body, chat, SETTINGS, Tokenizer())


@pytest.mark.parametrize(("body", "chat", "status", "param"), [
    (_chat(model="nope"), True, 404, "model"),
    (_chat(model=3), True, 404, "model"),
    ({"model": "m1"}, True, 400, "messages"),
    (_chat(messages=[]), True, 400, "messages"),
    (_chat(messages="hi"), True, 400, "messages"),
    (_chat(messages=[{"content": "no role"}]), True, 400, "messages"),
    (_chat(stream_options={"include_usage": True}), True, 400, "stream_options"),
    (_chat(stream=True, stream_options=[]), True, 400, "stream_options"),
    (_chat(stream="yes"), True, 400, "stream"),
    (_chat(max_tokens=0), True, 400, "max_tokens"),
    (_chat(max_tokens="5"), True, 400, "max_tokens"),
    (_chat(max_completion_tokens=0), True, 400, "max_completion_tokens"),
    (_chat(max_tokens=99), True, 400, "input_tokens"),
    (_chat(messages=[{"role": "user", "content": "word " * 200}]), True, 400, "input_tokens"),
    (_chat(n=0), True, 400, "n"),
    (_chat(n=129), True, 400, "n"),
    (_chat(stop=[1]), True, 400, "stop"),
    (_chat(max_tokens=3, min_tokens=4), True, 400, "min_tokens"),
    ({"model": "m1"}, False, 400, "prompt"),
    ({"model": "m1", "prompt": ""}, False, 400, "prompt"),
    ({"model": "m1", "prompt": [1.5]}, False, 400, "prompt"),
    ({"model": "m1", "prompt": [[-4]]}, False, 400, "tokens"),
    ({"model": "m1", "prompt": "x", "max_tokens": 100}, False, 400, "input_tokens"),
    ({"model": "m1", "prompt": "x", "logprobs": 21}, False, 400, "logprobs"),
    ({"model": "m1", "prompt": "x", "logprobs": -1}, False, 400, "logprobs"),
    ({"model": "m1", "prompt": "x", "logprobs": True}, False, 400, "logprobs"),
    (_chat(logprobs=1), True, 400, "logprobs"),
    (_chat(top_logprobs=2), True, 400, "top_logprobs"),
    (_chat(logprobs=True, top_logprobs=21), True, 400, "top_logprobs"),
    ({"model": "g", "messages": USER}, True, 404, "model"),
])
def test_refusals(body: dict[str, Any], chat: bool, status: int, param: str) -> None:
    with pytest.raises(SimError) as caught:
        _parse(body, chat)
    assert (caught.value.status, caught.value.param) == (status, param)


def test_context_length_message_is_vllms() -> None:
    with pytest.raises(SimError) as caught:
        _parse({"model": "m1", "prompt": "x", "max_tokens": 100}, chat=False)
    assert caught.value.message.startswith(
        "This model's maximum context length is 100 tokens. However, you requested 100 output "
        "tokens and your prompt contains 1 input tokens, for a total of 101 tokens.")


def test_defaults() -> None:
    chat = _parse({"messages": USER})
    assert (chat.model, chat.n, chat.max_tokens, chat.seed, chat.stream) == \
        ("m1", 1, None, 5, False)
    assert chat.limits(chat.prompts[0], 100).max_tokens == 100 - chat.prompts[0].tokens
    completion = _parse({"model": "m2", "prompt": "x"}, chat=False)
    assert completion.max_tokens == COMPLETION_MAX_TOKENS


def test_options() -> None:
    request = _parse(_chat(max_tokens=9, max_completion_tokens=7, seed=-3, n=2, stop="s",
                           stream=True, ignore_eos=True, include_stop_str_in_output=True,
                           stream_options={"include_usage": True,
                                           "continuous_usage_stats": True}))
    assert (request.max_tokens, request.seed, request.n, request.stop) == (7, -3, 2, ("s",))
    assert request.include_usage and request.continuous_usage and request.ignore_eos
    assert request.include_stop


def test_completion_prompts_of_every_form() -> None:
    tokenizer = Tokenizer()
    ids = tokenizer.encode("a b c")
    request = _parse({"model": "m1", "prompt": ["one", "two words"]}, chat=False)
    assert [p.text for p in request.prompts] == ["one", "two words"]
    assert [p.tokens for p in _parse({"model": "m1", "prompt": ids}, chat=False).prompts] == [3]
    batch = _parse({"model": "m1", "prompt": [ids, ids[:1]]}, chat=False).prompts
    assert [(p.text, p.tokens) for p in batch] == [("a b c", 3), ("a", 1)]


@pytest.mark.parametrize(("body", "chat", "text"), [
    ({"messages": [{"role": "user", "content": "first"}, {"role": "assistant", "content": "x"},
                   {"role": "user", "content": "last"}, {"role": "system", "content": "s"}]},
     True, "last"),
    ({"messages": "junk"}, True, ""),
    ({"prompt": "p"}, False, "p"),
    ({"prompt": ["a", 1, "b"]}, False, "a\nb"),
    ({"prompt": 7}, False, ""),
])
def test_fault_text_is_the_last_user_message_or_the_prompt(body: dict[str, Any], chat: bool,
                                                           text: str) -> None:
    assert fault_text(body, chat) == text


@pytest.mark.parametrize(("status", "kind"), [
    (400, "BadRequestError"), (404, "NotFoundError"), (429, "TooManyRequestsError"),
    (500, "InternalServerError"), (503, "ServiceUnavailableError"), (599, "InternalServerError"),
])
def test_error_type_is_named_after_the_status(status: int, kind: str) -> None:
    assert error_type(status) == kind
    assert SimError(status, "m", "p").body() == {
        "error": {"message": "m", "type": kind, "param": "p", "code": status}}


@pytest.mark.parametrize("raw", [b"{", b"[1]", b""])
def test_body_must_be_a_json_object(raw: bytes) -> None:
    with pytest.raises(SimError) as caught:
        parse_json(raw)
    assert caught.value.status == 400


@pytest.mark.parametrize(("body", "chat", "logprobs"), [
    ({"prompt": "x"}, False, None),
    ({"prompt": "x", "logprobs": 0}, False, 0),
    ({"prompt": "x", "logprobs": 20}, False, 20),
    ({"messages": USER}, True, None),
    ({"messages": USER, "logprobs": False, "top_logprobs": 0}, True, None),
    ({"messages": USER, "logprobs": True}, True, 0),
    ({"messages": USER, "logprobs": True, "top_logprobs": 5}, True, 5),
])
def test_logprobs_as_vllm_reads_them(body: dict[str, Any], chat: bool,
                                     logprobs: int | None) -> None:
    assert _parse({"model": "m1", **body}, chat).logprobs == logprobs


def test_guard_models_are_served() -> None:
    settings = SimSettings(models=("m1",), guard_models=("g",))
    request = parse_generate({"model": "g", "messages": USER}, True, settings, Tokenizer())
    assert request.model == "g"
    alone = SimSettings(models=(), guard_models=("g",))
    assert parse_generate({"messages": USER}, True, alone, Tokenizer()).model == "g"


@pytest.mark.parametrize(("field", "value", "rule"), [
    ("temperature", -1, "temperature must be non-negative, got -1.0."),
    ("top_p", 0, "top_p must be in (0, 1], got 0.0."),
    ("top_p", 1.5, "top_p must be in (0, 1], got 1.5."),
    ("top_k", -2, "top_k must be 0 (disable), or at least 1, got -2."),
    ("min_p", 2, "min_p must be in [0, 1], got 2.0."),
    ("presence_penalty", 3, "presence_penalty must be in [-2, 2], got 3.0."),
    ("frequency_penalty", -2.5, "frequency_penalty must be in [-2, 2], got -2.5."),
    ("repetition_penalty", 0, "repetition_penalty must be greater than zero, got 0.0."),
    ("temperature", "hot", "temperature: a number is required"),
    ("top_p", True, "top_p: a number is required"),
])
@pytest.mark.parametrize("stream", [False, True])
def test_sampling_knobs_out_of_range_are_refused_before_any_output(
        field: str, value: Any, rule: str, stream: bool) -> None:
    with pytest.raises(SimError) as caught:
        _parse(_chat(**{field: value, "stream": stream}))
    assert caught.value.status == 400 and caught.value.param == field
    assert str(caught.value).startswith(rule)


@pytest.mark.parametrize(("field", "value"), [("temperature", 0), ("top_p", 1),
                                              ("top_k", -1), ("top_k", 0),
                                              ("presence_penalty", -2), ("min_p", 0.0)])
def test_sampling_knobs_at_their_bounds_are_accepted(field: str, value: Any) -> None:
    assert _parse(_chat(**{field: value})).model == "m1"
