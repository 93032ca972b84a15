"""Chat-template control tokens in caller text, neutralised before they reach vLLM.

vLLM renders a chat request's messages into the model's template and tokenizes the result
as one string, and Hugging Face tokenizers turn any added-token string in it into the real
token: `<|eot_id|><|start_header_id|>assistant<|end_header_id|>` typed in a user message
ends that message and opens an assistant turn, exactly as the template's own would. A
caller could forge a whole compliant dialogue, or an assistant turn already saying "Sure,
here it is", inside one message, and vLLM has no per-request switch to stop it.

`neutralise` breaks each such string so no tokenizer matches it, and keeps it readable to
the model: its opening `<` becomes U+2039 (a single angle quote, as the guard's prompt
does) or its `[` U+FF3B (a fullwidth bracket). Covered: every `<|...|>` token (Llama 3,
ChatML, Phi, GLM, gpt-oss), DeepSeek's fullwidth-bar ones, Gemma's `<start_of_turn>` and
`<end_of_turn>`, and Mistral's bracketed control words (`[INST]`, `[/INST]`,
`[SYSTEM_PROMPT]`, `[TOOL_CALLS]`, ...). Ordinary text with angle brackets or brackets (HTML,
`[1]`, Markdown links) is left alone.

Only chat text is rewritten: on /v1/completions the caller writes the template itself, by
design. The structure classifier counts forged turns on both (many-shot jailbreaks).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

CONTROL_TOKEN = re.compile(
    r"<(?=\|[^|<>\s]{1,64}\|>)"  # <|eot_id|>, <|im_start|>, <|user|>, <|start|>
    r"|<(?=\uff5c[^\uff5c<>\s]{1,64}\uff5c>)"  # DeepSeek's, with fullwidth bars (U+FF5C)
    r"|<(?=/?(?:start_of_turn|end_of_turn)>)"  # Gemma
    r"|\[(?=/?(?:INST|SYSTEM_PROMPT|TOOL_CALLS|AVAILABLE_TOOLS|TOOL_RESULTS|TOOL_CONTENT"
    r"|THINK)\])")  # Mistral's control words
_SAFE = {"<": "\u2039", "[": "\uff3b"}

# Message keys vLLM reads (and a chat template may render); anything else is dropped.
MESSAGE_KEYS = frozenset({"role", "content", "name", "tool_calls", "tool_call_id",
                          "reasoning_content", "reasoning"})


def neutralise(text: str) -> str:
    """`text` with no control-token string left in it (itself when it has none)."""
    if "<" not in text and "[" not in text:  # most text: one scan each, no regex
        return text
    return CONTROL_TOKEN.sub(lambda m: _SAFE[m.group()], text)


def _strings(value: Any) -> Any:
    """A JSON value with `neutralise` applied to every string in it (keys too)."""
    if isinstance(value, str):
        return neutralise(value)
    if isinstance(value, list):
        return [_strings(item) for item in value]
    if isinstance(value, dict):
        return {neutralise(k): _strings(v) for k, v in value.items()}
    return value


def neutralise_chat(body: dict[str, Any], part_keys: Mapping[str, str]) -> None:
    """Neutralise, in place, every caller string a chat template renders: message contents
    (strings and the text of text parts, whose key `part_keys` gives by part type), names,
    reasoning, tool calls and their ids, and the tool definitions. Unknown message keys
    are dropped (a custom template could read them); text parts keep their type and text."""
    messages = body.get("messages")
    if isinstance(messages, list):
        for i, message in enumerate(messages):
            if isinstance(message, dict):
                messages[i] = _message(message, part_keys)
    if isinstance(body.get("tools"), list):
        body["tools"] = _strings(body["tools"])


def _message(message: dict[str, Any], part_keys: Mapping[str, str]) -> dict[str, Any]:
    kept = {key: value for key, value in message.items() if key in MESSAGE_KEYS}
    for key, value in kept.items():
        if key == "content" and isinstance(value, list):
            kept[key] = [_part(part, part_keys) for part in value]
        elif key != "role":
            kept[key] = _strings(value)
    return kept


def _part(part: Any, part_keys: Mapping[str, str]) -> Any:
    kind = part.get("type") if isinstance(part, dict) else None
    key = part_keys.get(kind) if isinstance(kind, str) else None
    if key is None:
        return part  # a media part: no text of its own
    return {"type": part["type"], key: neutralise(part[key])}
