"""withhold_echo: upstream error messages keep their sense and lose the caller's words."""

from __future__ import annotations

import pytest

from gateway.errors import UpstreamStatus
from gateway.pipeline.upstream.echo import withhold_echo

BODY = {"model": "sim-llama-3-8b-instruct", "messages": [
    {"role": "user", "content": [{"type": "text", "text": "my secret plan for the heist"}]},
    {"role": "user", "content": "opensesame"}]}


def _error(message: str) -> UpstreamStatus:
    return UpstreamStatus(400, message, type_="invalid_request_error", param="messages",
                          code="bad")


@pytest.mark.parametrize(("message", "kept"), [
    ("Value error [type=value_error, input_value=[{'role': 'user'}], input_type=list]",
     "input_value=[withheld], input_type=list"),
    ("[{'type': 'missing', 'loc': ['body'], 'input': {'messages': [1]}, 'ctx': {}}]",
     "'input': [withheld]"),
    ("cannot continue: My Secret Plan for the heist", "withheld"),
    ("token opensesame is odd", "withheld"),
])
def test_quotations_are_cut_or_withheld(message: str, kept: str) -> None:
    error = withhold_echo(_error(message), BODY)
    assert "secret" not in error.message.lower() and "opensesame" not in error.message
    assert kept in error.message
    assert (error.http_status, error.error_type, error.param, error.code) == (
        400, "invalid_request_error", "messages", "bad")


@pytest.mark.parametrize("message", [
    "The model `sim-llama-3-8b-instruct` does not exist.",  # names the model, not the prompt
    "This model's maximum context length is 8192 tokens. However, you requested 9000.",
    "plan the day",  # shares words with the prompt, never three in a row
])
def test_messages_without_the_callers_words_pass_unchanged(message: str) -> None:
    error = _error(message)
    assert withhold_echo(error, BODY) is error



def test_of_a_long_text_only_its_ends_are_compared() -> None:
    """pydantic quotes a long value by its two ends; the middle is not read, so a
    multi-megabyte prompt costs a bounded amount of work on every upstream 4xx."""
    filler = "lorem ipsum " * 200_000
    text = (f"opening words of the prompt {filler} buried middle phrase here {filler} "
            "closing words of the prompt")
    body = {"messages": [{"role": "user", "content": text}]}
    for quoted in ("opening words of the", "closing words of the"):
        assert "withheld" in withhold_echo(_error(f"bad value: '{quoted}'"), body).message
    middle = _error("bad value: 'buried middle phrase'")
    assert withhold_echo(middle, body) is middle
