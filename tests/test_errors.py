import orjson
import pytest

from gateway.errors import (
    UPSTREAM_MESSAGE_CHARS,
    ModelNotFound,
    RateLimited,
    normalise_upstream_error,
    shown,
)


def test_error_renders_openai_shape() -> None:
    error = ModelNotFound("no such model", param="model")
    assert error.http_status == 404
    assert orjson.loads(error.to_json()) == {"error": {
        "message": "no such model", "type": "invalid_request_error", "param": "model",
        "code": "model_not_found"}}
    assert RateLimited("slow down").body()["error"]["code"] == "rate_limit_exceeded"


@pytest.mark.parametrize(
    ("status", "raw", "expected"),
    [
        # vLLM's current nested form with an integer code and a class-name type
        (404, b'{"error": {"message": "The model `x` does not exist.", "type": "NotFoundError",'
              b' "param": "model", "code": 404}}',
         ("The model `x` does not exist.", "invalid_request_error", "model", "model_not_found")),
        # vLLM's older flat form
        (400, b'{"object": "error", "message": "bad n", "type": "BadRequestError",'
              b' "param": null, "code": 400}',
         ("bad n", "invalid_request_error", None, None)),
        # plain text from something in between
        (429, b"Too Many Requests",
         ("upstream returned HTTP 429", "rate_limit_error", None, "rate_limit_exceeded")),
        # vLLM's type for a 429, named after the status phrase
        (429, b'{"error": {"message": "busy", "type": "TooManyRequestsError", "param": null,'
              b' "code": 429}}',
         ("busy", "rate_limit_error", None, "rate_limit_exceeded")),
        (422, b'{"error": {"message": "m", "type": "UnprocessableEntityError", "code": 422}}',
         ("m", "invalid_request_error", None, None)),
        # already OpenAI-shaped: kept as it is
        (400, b'{"error": {"message": "m", "type": "invalid_request_error", "param": "n",'
              b' "code": "invalid_value"}}',
         ("m", "invalid_request_error", "n", "invalid_value")),
    ],
)
def test_normalise_upstream_error(status: int, raw: bytes,
                                  expected: tuple[str, str, str | None, str | None]) -> None:
    error = normalise_upstream_error(status, raw)
    body = error.body()["error"]
    assert error.http_status == status
    assert (body["message"], body["type"], body["param"], body["code"]) == expected


def test_an_upstream_message_is_bounded_and_shows_what_it_holds() -> None:
    """A backend's message reaches the client and its logs: no terminal escapes or bidi
    overrides pass as they are, and a megabyte of it does not either."""
    raw = orjson.dumps({"error": {"message": "bad\x1b[2J\u202eevil" + "x" * 100_000,
                                  "type": "BadRequestError", "code": 400}})
    message = normalise_upstream_error(400, raw).body()["error"]["message"]
    assert message.startswith("bad\\u001b[2J\\u202eevil")
    assert len(message) == UPSTREAM_MESSAGE_CHARS + 3 + 5 * 2  # the two escapes, "..."
    assert message.endswith("x...")


def test_shown_bounds_a_value_and_escapes_what_would_not_show() -> None:
    assert shown("llama-3-8b") == "llama-3-8b"
    assert shown("ünïcode 模型") == "ünïcode 模型"  # letters of any script stay
    assert shown("a" * 70) == "a" * 64 + "..."
    assert shown("a\x00b\x1b[31mc\u202ed\u2066e\ufeff") == (
        "a\\u0000b\\u001b[31mc\\u202ed\\u2066e\\ufeff")
    # invisible tag characters: a JSON surrogate pair, so a JSON reader gets them back
    assert shown("tag\U000e0041") == "tag\\udb40\\udc41"
    tagged = shown("tag\U000e0041")
    assert orjson.loads(f'"{tagged}"') == "tag\U000e0041"
