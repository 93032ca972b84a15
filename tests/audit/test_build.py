from __future__ import annotations

from typing import Any

import pytest

from gateway.audit.build import build_record, prompt_text
from gateway.audit.record import AuditKeys, limit_refused
from gateway.context import Principal, RequestContext, Usage

KEYS = AuditKeys(b"k" * 32)


def ctx(**overrides: Any) -> RequestContext:
    body = {"model": "m", "messages": [{"role": "system", "content": "Be kind."},
                                       {"role": "user", "content": "secret plan"}]}
    fields: dict[str, Any] = {"request_id": "r1", "route": "chat", "body": body, "model": "m",
                              "principal": Principal(sub="alice", tier="public"),
                              "tier": "public", "decision": "allow",
                              "usage": Usage(prompt_tokens=12, completion_tokens=34)}
    return RequestContext(**(fields | overrides))


def test_record_carries_the_facts_but_not_the_subject_or_prompt() -> None:
    record = build_record(ctx(), status=200, keys=KEYS, action="flag",
                          scores={"cyber": 0.7}, categories=("cyber",),
                          limit="admitted", watermark_key_id="wm-1", policy_version="v3",
                          policy_hash="h", now=5.0)
    assert record.key_id == KEYS.key_id("alice") and "alice" not in str(record)
    assert record.prompt is None and "secret plan" not in str(record)
    assert record.prompt_hash == KEYS.prompt_hash("system: Be kind.\nuser: secret plan")
    assert (record.prompt_tokens, record.completion_tokens) == (12, 34)
    assert (record.tier, record.route, record.status, record.time) == ("public", "chat", 200, 5)
    assert record.scores == {"cyber": 0.7} and record.watermark_key_id == "wm-1"


def test_a_token_pasted_into_the_model_is_not_kept() -> None:
    """The log redacts it; the append-only audit log must not keep it either."""
    jwt = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
    record = build_record(ctx(model=f"Bearer {jwt}"), status=403, keys=KEYS)
    assert jwt not in str(record) and record.model.startswith("Bearer ")
    assert build_record(ctx(model="org/llama-3-8b"), status=200, keys=KEYS).model == \
        "org/llama-3-8b"


def test_prompt_stored_only_when_opted_in_and_refusals_without_principal() -> None:
    record = build_record(ctx(), status=200, keys=KEYS, store_prompt=True)
    assert record.prompt == "system: Be kind.\nuser: secret plan"
    refused = build_record(ctx(principal=None, decision="rate_limited",
                               usage=Usage(), prompt_tokens=7),
                           status=429, keys=KEYS, limit=limit_refused("tokens_per_minute"))
    assert refused.key_id == "-" and refused.prompt_tokens == 7
    assert refused.limit == "refused:tokens_per_minute"


@pytest.mark.parametrize(("body", "text"), [
    ({"prompt": "once upon"}, "once upon"),
    ({"prompt": ["a", "b"]}, "a\nb"),
    ({"input": "embed me"}, "embed me"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"},
                                                {"type": "image_url", "image_url": {}}]}]},
     "user: hi"),
    ({}, ""),
    # A body the shape stage refused is still audited: odd parts must not raise (a 500).
    ({"messages": [{"role": "assistant", "content": [{"type": {}, "text": ""},
                                                     {"type": "input_text", "text": "x"}]}]},
     "assistant: x"),
])
def test_prompt_text(body: dict[str, Any], text: str) -> None:
    assert prompt_text(body) == text
