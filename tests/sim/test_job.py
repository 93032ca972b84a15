"""A planned job's bodies and events have vLLM's fields."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.sim.guard import Verdict
from gateway.sim.job import Job, plan_job
from gateway.sim.protocol import parse_generate
from gateway.sim.settings import SimSettings
from gateway.sim.tokenizer import Tokenizer

SETTINGS = SimSettings()
MODEL = SETTINGS.models[0]


def _job(chat: bool = True, **body: Any) -> Job:
    base = {"messages": [{"role": "user", "content": "hi"}]} if chat else {"prompt": "hi"}
    request = parse_generate({"model": MODEL, **base, **body}, chat, SETTINGS, Tokenizer())
    return plan_job(request, SETTINGS.max_model_len)


def _event(frame: bytes) -> dict[str, Any]:
    assert frame.startswith(b"data: ") and frame.endswith(b"\n\n")
    event: dict[str, Any] = orjson.loads(frame[6:])
    return event


def test_chat_body() -> None:
    job = _job(max_tokens=5)
    body = job.body()
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion"
    assert body["model"] == MODEL and isinstance(body["created"], int)
    [choice] = body["choices"]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == job.choices[0].plan.text
    assert (choice["finish_reason"], choice["stop_reason"], choice["logprobs"]) == \
        ("length", None, None)
    assert body["usage"] == {"prompt_tokens": job.prompt_tokens, "total_tokens":
                             job.prompt_tokens + 5, "completion_tokens": 5,
                             "prompt_tokens_details": None, "completion_tokens_details": None}
    assert body["system_fingerprint"].startswith("vllm-0.32.0-")


def test_completion_body_numbers_choices_per_prompt() -> None:
    job = _job(chat=False, prompt=["a", "b"], n=2, max_tokens=3)
    body = job.body()
    assert body["id"].startswith("cmpl-") and body["object"] == "text_completion"
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    texts = [c["text"] for c in body["choices"]]
    assert len(set(texts)) == 4
    # A prompt's answers do not depend on its place in the batch.
    alone = _job(chat=False, prompt="b", n=2, max_tokens=3).body()["choices"]
    assert texts[2:] == [c["text"] for c in alone]
    assert body["usage"]["prompt_tokens"] == 2 and body["usage"]["completion_tokens"] == 12


def test_chat_events() -> None:
    job = _job(max_tokens=3, stream=True)
    choice = job.choices[0]
    role = _event(job.role_event(choice))
    assert role["object"] == "chat.completion.chunk" and role["id"] == job.id
    assert role["choices"] == [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                "logprobs": None, "finish_reason": None}]
    assert "usage" not in role
    first, last = (_event(job.token_event(choice, i)) for i in (0, 2))
    assert first["choices"][0] == {"index": 0, "delta": {"content": choice.plan.pieces[0]},
                                   "logprobs": None, "finish_reason": None, "token_ids": None}
    assert (last["choices"][0]["finish_reason"], last["choices"][0]["stop_reason"]) == \
        ("length", None)
    # Without a usage chunk, the last token's event is the stream's last: it names the build.
    assert "system_fingerprint" not in first and last["system_fingerprint"].startswith("vllm-")


def test_completion_events_and_usage_event() -> None:
    job = _job(chat=False, max_tokens=2, stream=True, stop=[" "],
               stream_options={"include_usage": True})
    choice = job.choices[0]
    entry = _event(job.token_event(choice, choice.plan.tokens - 1))["choices"][0]
    assert entry == {"index": 0, "text": "", "logprobs": None, "finish_reason": "stop",
                     "stop_reason": " ", "prompt_token_ids": None, "token_ids": None}
    assert "system_fingerprint" not in _event(job.token_event(choice, 0))
    usage = _event(job.usage_event())
    assert usage["system_fingerprint"].startswith("vllm-")
    assert usage["object"] == "text_completion" and usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 1, "total_tokens": 2, "completion_tokens": 1}


def test_continuous_usage_counts_each_choices_tokens() -> None:
    job = _job(max_tokens=4, n=2, stream=True,
               stream_options={"include_usage": True, "continuous_usage_stats": True})
    second = job.choices[1]
    assert _event(job.role_event(second))["usage"]["completion_tokens"] == 0
    usage = _event(job.token_event(second, 2))["usage"]
    assert usage == {"prompt_tokens": job.prompt_tokens,
                     "total_tokens": job.prompt_tokens + 3, "completion_tokens": 3}


def _guard_job(chat: bool, **body: Any) -> Job:
    base = {"messages": [{"role": "user", "content": "hi"}]} if chat else {"prompt": "hi"}
    request = parse_generate({"model": MODEL, **base, **body}, chat, SETTINGS, Tokenizer())
    verdict = Verdict("unsafe\nS9", 0.9)
    return plan_job(request, SETTINGS.max_model_len,
                    guard=[(verdict, ("unsafe", "\n", "S", "9"))])


def test_guard_logprobs_only_when_asked() -> None:
    assert _guard_job(True).body()["choices"][0]["logprobs"] is None
    assert _guard_job(False).body()["choices"][0]["logprobs"] is None
    chat = _guard_job(True, logprobs=True).body()["choices"][0]
    assert chat["message"]["content"] == "unsafe\nS9"
    assert [(e["token"], e["top_logprobs"]) for e in chat["logprobs"]["content"]][:1] == \
        [("unsafe", [])]  # top_logprobs 0: none
    completion = _guard_job(False, logprobs=0).body()["choices"][0]["logprobs"]
    assert completion["tokens"] == ["unsafe", "\n", "S", "9", "<|end|>"]
    assert [list(top) for top in completion["top_logprobs"]] == \
        [[t] for t in completion["tokens"]]


def test_guard_events_carry_their_tokens_logprobs() -> None:
    job = _guard_job(False, logprobs=1, stream=True)
    choice = job.choices[0]
    events = [_event(job.token_event(choice, step)) for step in range(job.steps)]
    assert [e["choices"][0]["logprobs"]["text_offset"] for e in events] == \
        [[0], [6], [7], [8], [9]]
    chat = _guard_job(True, logprobs=True, top_logprobs=2, stream=True)
    first = _event(chat.token_event(chat.choices[0], 0))["choices"][0]["logprobs"]
    assert [t["token"] for t in first["content"][0]["top_logprobs"]] == ["unsafe", "safe"]
    assert _event(chat.role_event(chat.choices[0]))["choices"][0]["logprobs"] is None
