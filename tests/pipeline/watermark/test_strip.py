"""strip_marks_from_messages: echoed replies lose their marks before the model sees them."""

from __future__ import annotations

from typing import Any

from gateway.pipeline.watermark.strip import strip_marks_from_messages
from tests.pipeline.watermark.helpers import MARK, PROSE, run_filter


def test_chat_messages_lose_marks_in_every_text_place() -> None:
    marked, _ = run_filter(PROSE)
    n = marked.count(MARK)
    body: dict[str, Any] = {"messages": [
        {"role": "user", "content": "Tell me a story ❤️"},
        {"role": "assistant", "content": marked},
        {"role": "user", "content": [{"type": "text", "text": "About " + marked},
                                     {"type": "image_url", "image_url": {"url": "x"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "1", "type": "function",
             "function": {"name": "f", "arguments": '{"q": "a ' + MARK + 'b"}'}}]},
    ]}
    assert strip_marks_from_messages(body) == 2 * n + 1
    messages = body["messages"]
    assert messages[0]["content"] == "Tell me a story ❤️"
    assert messages[1]["content"] == PROSE
    assert messages[2]["content"][0]["text"] == "About " + PROSE
    assert messages[3]["tool_calls"][0]["function"]["arguments"] == '{"q": "a b"}'


def test_completions_prompts_lose_marks() -> None:
    marked, _ = run_filter(PROSE)
    body: dict[str, Any] = {"prompt": marked}
    assert strip_marks_from_messages(body) >= 1
    assert body["prompt"] == PROSE
    body = {"prompt": ["a", marked]}
    strip_marks_from_messages(body)
    assert body["prompt"] == ["a", PROSE]
    tokens: dict[str, Any] = {"prompt": [1, 2, 3]}
    assert strip_marks_from_messages(tokens) == 0 and tokens["prompt"] == [1, 2, 3]


def test_bodies_without_marks_are_left_as_they_are() -> None:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}, "junk"]}
    assert strip_marks_from_messages(body) == 0
    assert body == {"messages": [{"role": "user", "content": "hi"}, "junk"]}
