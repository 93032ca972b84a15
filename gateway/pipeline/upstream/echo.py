"""Upstream error messages that quote the request are not passed on.

vLLM's validation errors print the offending input (pydantic's `input_value=...`, or the
`'input': ...` of its error list), so an upstream 400 can carry the caller's prompt; error
bodies are logged by clients and proxies, and the gateway promises they never carry one.
The quoted input is cut out where its shape is known; a message that still repeats the
request's text is replaced by a plain one (status, type, param and code are kept).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from gateway.errors import UpstreamStatus

_QUOTED_INPUT = re.compile(r"(input_value=).*?(?=, input_type=)|('input': ).*?(?=, 'ctx'|\}\])",
                           re.DOTALL)
_WORD = re.compile(r"\w+")
_TEXT_KEYS = frozenset({"content", "text", "prompt", "input", "arguments"})
_SHORTEST = 6  # a text of fewer words counts only when it is at least this long
# Quotations show a value's start or end (pydantic's input_value keeps both ends of a long
# string), so of a longer text only its ends are compared: a multi-megabyte prompt would
# otherwise cost the event loop a second of trigrams on every upstream 4xx.
_END_CHARS = 32_768

Trigram = tuple[str, str, str]


def withhold_echo(error: UpstreamStatus, body: dict[str, Any]) -> UpstreamStatus:
    """`error` with no quotation of `body`'s texts in its message."""
    message = _QUOTED_INPUT.sub(lambda m: (m[1] or m[2]) + "[withheld]", error.message)
    if _repeats(message.casefold(), body):
        message = (f"The upstream server refused the request (HTTP {error.http_status}); "
                   "its message quoted the request and is withheld")
    if message == error.message:
        return error
    return UpstreamStatus(error.http_status, message, type_=error.error_type,
                          param=error.param, code=error.code, headers=error.headers)


def _repeats(message: str, body: dict[str, Any]) -> bool:
    said = _trigrams(message)
    for text in _ends(_texts(body)):
        folded = text.casefold()
        grams = _trigrams(folded)
        if grams & said if grams else len(folded.strip()) >= _SHORTEST and folded in message:
            return True
    return False


def _ends(texts: Iterator[str]) -> Iterator[str]:
    for text in texts:
        if len(text) <= 2 * _END_CHARS:
            yield text
        else:
            yield text[:_END_CHARS]
            yield text[-_END_CHARS:]


def _trigrams(text: str) -> set[Trigram]:
    words = _WORD.findall(text)
    return set(zip(words, words[1:], words[2:], strict=False))


def _texts(body: dict[str, Any]) -> Iterator[str]:
    """The caller's words: strings under content, text, prompt, input or arguments, at any
    depth (not model names, roles or types, which error messages name legitimately)."""
    stack: list[tuple[Any, bool]] = [(body, False)]
    while stack:
        value, is_text = stack.pop()
        if isinstance(value, str):
            if is_text:
                yield value
        elif isinstance(value, dict):
            stack.extend((v, is_text or k in _TEXT_KEYS) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, is_text) for v in value)
