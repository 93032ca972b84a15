"""Removing the gateway's own marks from what clients send back.

Conversations echo earlier replies, marks included; the shape stage calls
`strip_marks_from_messages(ctx.body)` so marks never reach the model (they would cost
tokens, could be copied into new output and would skew classification). Only
mark-shaped runs are removed; ordinary variation selectors (emoji, CJK) stay.
"""

from __future__ import annotations

from typing import Any

from gateway.pipeline.watermark.payload import MARK_LEN, count_marks, strip_marks


def _strip(value: str) -> tuple[str, int]:
    if len(value) < MARK_LEN:
        return value, 0
    n = count_marks(value)
    return (strip_marks(value), n) if n else (value, 0)


def _strip_content(holder: dict[str, Any], key: str) -> int:
    value = holder.get(key)
    if isinstance(value, str):
        holder[key], n = _strip(value)
        return n
    removed = 0
    if isinstance(value, list):
        for i, part in enumerate(value):
            if isinstance(part, str):
                value[i], n = _strip(part)
                removed += n
            elif isinstance(part, dict):
                for name in ("text", "refusal", "thinking"):  # the text-like parts' keys
                    if isinstance(part.get(name), str):
                        part[name], n = _strip(part[name])
                        removed += n
    return removed


def strip_marks_from_messages(body: dict[str, Any]) -> int:
    """Strip marks in place from chat messages (content, text parts, tool-call
    arguments) and completions prompts; returns how many marks were removed."""
    removed = 0
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if not isinstance(message, dict):
                continue
            removed += _strip_content(message, "content")
            for call in message.get("tool_calls") or ():
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict):
                    removed += _strip_content(function, "arguments")
    if "prompt" in body:
        removed += _strip_content(body, "prompt")
    return removed
