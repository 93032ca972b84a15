"""Build the AuditRecord for a request from its RequestContext, once the response ended."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from gateway.audit.record import LIMIT_NONE, AuditKeys, AuditRecord
from gateway.context import RequestContext
from gateway.logs import scrub_credentials
from gateway.pipeline.shape import part_text


def build_record(ctx: RequestContext, *, status: int, keys: AuditKeys,
                 action: str = "none", scores: Mapping[str, float] | None = None,
                 categories: tuple[str, ...] = (), limit: str = LIMIT_NONE,
                 watermark_key_id: str | None = None, policy_version: str = "",
                 policy_hash: str = "", store_prompt: bool = False,
                 now: float | None = None) -> AuditRecord:
    """`store_prompt` should be AuditSettings.store_prompts and the tier's own opt-in;
    without it only the keyed prompt hash is kept."""
    text = prompt_text(ctx.body)
    return AuditRecord(
        request_id=ctx.request_id,
        time=time.time() if now is None else now,
        key_id=keys.key_id(ctx.principal.sub) if ctx.principal is not None else "-",
        tier=ctx.tier,
        model=scrub_credentials(ctx.model),  # a client's string: a token pasted in it
        route=ctx.route,
        status=status,
        decision=ctx.decision,
        action=action,
        scores=dict(scores or {}),
        categories=categories,
        limit=limit,
        prompt_tokens=ctx.usage.prompt_tokens or ctx.prompt_tokens or 0,
        completion_tokens=ctx.usage.completion_tokens,
        watermark_key_id=watermark_key_id,
        policy_version=policy_version,
        policy_hash=policy_hash,
        prompt_hash=keys.prompt_hash(text) if text else None,
        prompt=text if store_prompt and text else None,
    )


def prompt_text(body: Mapping[str, Any]) -> str:
    """The prompt as forwarded (system prompt included): chat messages as `role: text`
    lines, a completion prompt or embedding input as is (lists joined by newlines)."""
    messages = body.get("messages")
    if isinstance(messages, list):
        lines = []
        for message in messages:
            if isinstance(message, Mapping):
                lines.append(f"{message.get('role', '?')}: {_text(message.get('content'))}")
        return "\n".join(lines)
    for name in ("prompt", "input"):
        if name in body:
            return _text(body[name])
    return ""


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts, or a batch of prompts
        parts = [part_text(p) or "" if isinstance(p, Mapping) else _text(p) for p in content]
        return "\n".join(str(p) for p in parts if p)
    return "" if content is None else str(content)
