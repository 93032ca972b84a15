"""One accepted generation request, planned in full, and its vLLM-shaped output.

The answer is decided before the first byte (generation is deterministic), so serving a
job is only a matter of pacing. Shapes follow vLLM's OpenAI server: non-stream bodies
carry every field vLLM serialises; stream events carry the fields vLLM sets, i.e. the
role chunk `{"role": "assistant", "content": ""}`, one chunk per generated token, the
last one with `finish_reason` and `stop_reason`, and the usage chunk with `choices: []`.

The fields are vLLM 0.32's (tests/sim/vllm_recorded.json holds what it answered): the
ones it always sends as null (`token_ids`, `prompt_token_ids`, `routed_experts`, ...)
included, and `system_fingerprint` on the last event before `[DONE]`.

Logprobs, where the request asks (`logprobs: N` for completions, `logprobs: true,
top_logprobs: N` for chat; guard models say theirs, guard.py, others alternatives.py),
take vLLM's shapes: completions `{"tokens", "token_logprobs", "top_logprobs": [{token: logprob}],
"text_offset"}` with up to N+1 entries per dict (the sampled token first, then the top
N), chat `{"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token",
"logprob", "bytes"}]}]}` with N entries; in a stream, each chunk's for its own token.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.sim.alternatives import plain_tops
from gateway.sim.generate import Plan, plan
from gateway.sim.guard import Top, Verdict, tops
from gateway.sim.prose import Prose
from gateway.sim.protocol import GenerateRequest
from gateway.sim.settings import VLLM_VERSION

DONE = b"data: [DONE]\n\n"
SYSTEM_FINGERPRINT = f"vllm-{VLLM_VERSION}-51a7e000"  # vLLM's: its version and a build hash


@dataclass(frozen=True, slots=True)
class Choice:
    index: int
    prompt_tokens: int
    plan: Plan
    top: tuple[Top, ...] | None = None  # per token, when logprobs were asked and known
    offset: tuple[int, ...] = ()  # per token, the length of the text before it

    def logprobs(self, chat: bool, n: int, start: int = 0,
                 stop: int | None = None) -> dict[str, Any] | None:
        """vLLM's logprobs of tokens start..stop, with N alternatives; None if unknown."""
        if self.top is None:
            return None
        tops = self.top[start:stop]
        if chat:
            return {"content": [{**_entry(*top[0]),
                                 "top_logprobs": [_entry(*e) for e in _ranked(top, n)[:n]]}
                                for top in tops]}
        return {"text_offset": list(self.offset[start:stop]),
                "token_logprobs": [top[0][1] for top in tops],
                "tokens": [top[0][0] for top in tops],
                "top_logprobs": [dict(_ranked(top, n)) for top in tops]}


@dataclass(frozen=True, slots=True)
class Job:
    request: GenerateRequest
    id: str
    created: int
    choices: tuple[Choice, ...]

    @property
    def prompt_tokens(self) -> int:
        return sum(p.tokens for p in self.request.prompts)

    @property
    def completion_tokens(self) -> int:
        return sum(c.plan.tokens for c in self.choices)

    @property
    def steps(self) -> int:
        """Engine steps: the choices generate side by side."""
        return max(c.plan.tokens for c in self.choices)

    def usage(self) -> dict[str, Any]:
        return _usage(self.prompt_tokens, self.completion_tokens)

    def body(self) -> dict[str, Any]:
        """The non-stream response."""
        choices: list[dict[str, Any]]
        if self.request.chat:
            choices = [{"index": c.index,
                        "message": {"role": "assistant", "content": c.plan.text,
                                    "refusal": None, "annotations": None, "audio": None,
                                    "function_call": None, "reasoning": None},
                        "logprobs": c.logprobs(True, self._top_n),
                        "finish_reason": c.plan.finish_reason,
                        "stop_reason": c.plan.stop_reason, "token_ids": None,
                        "routed_experts": None} for c in self.choices]
        else:
            choices = [{"index": c.index, "text": c.plan.text,
                        "logprobs": c.logprobs(False, self._top_n),
                        "finish_reason": c.plan.finish_reason,
                        "stop_reason": c.plan.stop_reason, "prompt_logprobs": None,
                        "prompt_token_ids": None, "token_ids": None, "routed_experts": None}
                       for c in self.choices]
        out = self._head("chat.completion" if self.request.chat else "text_completion")
        out.update(choices=choices, service_tier=None, system_fingerprint=SYSTEM_FINGERPRINT,
                   usage={**self.usage(), "prompt_tokens_details": None,
                          "completion_tokens_details": None})
        if self.request.chat:
            out.update(prompt_logprobs=None, prompt_token_ids=None, prompt_text=None)
        out.update(kv_transfer_params=None, ec_transfer_params=None, metrics=None)
        return out

    def role_event(self, choice: Choice) -> bytes:
        """Chat streams open each choice with the assistant role and empty content."""
        entry = {"index": choice.index, "delta": {"role": "assistant", "content": ""},
                 "logprobs": None, "finish_reason": None}
        return self._event(entry, choice, 0, prompt_text=None, prompt_token_ids=None)

    def token_event(self, choice: Choice, step: int) -> bytes:
        """The chunk of `choice`'s token number `step`; the last one says why it ended."""
        p = choice.plan
        last = step == p.tokens - 1
        if self.request.chat:
            entry: dict[str, Any] = {"index": choice.index, "delta": {"content": p.pieces[step]},
                                     "logprobs": choice.logprobs(True, self._top_n, step,
                                                                 step + 1),
                                     "finish_reason": None, "token_ids": None}
            if last:
                entry.update(finish_reason=p.finish_reason, stop_reason=p.stop_reason)
        else:
            entry = {"index": choice.index, "text": p.pieces[step],
                     "logprobs": choice.logprobs(False, self._top_n, step, step + 1),
                     "finish_reason": p.finish_reason if last else None,
                     "stop_reason": p.stop_reason if last else None,
                     "prompt_token_ids": None, "token_ids": None}
        end = last and not self.request.include_usage and choice is self._ends_last
        extra = {"system_fingerprint": SYSTEM_FINGERPRINT} if end else {}
        return self._event(entry, choice, step + 1, **extra)

    def usage_event(self) -> bytes:
        event = self._head(self._chunk_object)
        event.update(choices=[], usage=self.usage(), system_fingerprint=SYSTEM_FINGERPRINT)
        return b"data: " + orjson.dumps(event) + b"\n\n"

    @property
    def _ends_last(self) -> Choice:
        """The choice whose last token is the stream's last event (the highest index among
        the longest: the engine writes a step's chunks in choice order)."""
        return max(self.choices, key=lambda c: (c.plan.tokens, c.index))

    @property
    def _top_n(self) -> int:
        return self.request.logprobs or 0

    @property
    def _chunk_object(self) -> str:
        return "chat.completion.chunk" if self.request.chat else "text_completion"

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created,
                "model": self.request.model}

    def _event(self, entry: dict[str, Any], choice: Choice, generated: int,
               **fields: Any) -> bytes:
        event = self._head(self._chunk_object)
        event["choices"] = [entry]
        event.update(fields)
        if self.request.continuous_usage:
            event["usage"] = _usage(choice.prompt_tokens, generated)
        return b"data: " + orjson.dumps(event) + b"\n\n"


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt, "total_tokens": prompt + completion,
            "completion_tokens": completion}


def plan_job(request: GenerateRequest, max_model_len: int, prose: Prose | None = None,
             guard: Sequence[tuple[Verdict, tuple[str, ...]]] = ()) -> Job:
    """Every choice's answer. Choice i*n+j answers prompt i, as vLLM numbers them; its text
    depends on the prompt, the seed and j only, not on the prompt's place in a batch.
    A guard model's job has one (verdict, its tokens) per prompt (guard.py)."""
    n = request.n
    choices = []
    for i, prompt in enumerate(request.prompts):
        verdict, said = guard[i] if guard else (None, ())
        for j in range(n):
            answer = plan(prompt.text, request.seed, j, request.limits(prompt, max_model_len),
                          prose, said)
            choices.append(_choice(i * n + j, prompt.tokens, answer, verdict,
                                   request.logprobs is not None, request.seed))
    prefix = "chatcmpl" if request.chat else "cmpl"
    return Job(request, f"{prefix}-{uuid.uuid4().hex}", int(time.time()), tuple(choices))


def _choice(index: int, prompt_tokens: int, answer: Plan, verdict: Verdict | None,
            logprobs: bool, seed: int) -> Choice:
    if not logprobs:
        return Choice(index, prompt_tokens, answer)
    offsets = list(itertools.accumulate((len(p) for p in answer.pieces), initial=0))[:-1]
    top = tops(verdict, answer.token_texts) if verdict is not None \
        else plain_tops(answer.token_texts, seed + index)
    return Choice(index, prompt_tokens, answer, top, tuple(offsets))


def _entry(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode())}


def _ranked(top: Top, n: int) -> list[tuple[str, float]]:
    """The sampled token and the top n, once each, as vLLM's logprobs dict holds them:
    n entries when the sampled token is among the top n, else n + 1."""
    seen: dict[str, float] = {}
    for token, logprob in top[:n + 1]:
        seen.setdefault(token, logprob)
    return list(seen.items())
