from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import orjson
import pytest

from gateway.context import Principal, RequestContext, Usage
from gateway.logs import (
    _REMEMBERED,
    REDACTED,
    JsonFormatter,
    Redactor,
    configure_logging,
    request_log_fields,
)

# A well-formed (unsigned-looking) JWT and a planted server secret.
JWT = ("eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSIsInRpZXIiOiJwdWJsaWMifQ."
       "MEUCIQDf0aZ3pq1iUjQ2Tb9rC2gLxYw5yqkT8h3bS4e1x6yv1wIgD8c")
SECRET = "s3cr3t-value-of-the-cache-salt-0123456789abcdef"


@pytest.fixture
def stream(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    monkeypatch.setenv("GATEWAY_SECRET_CACHE_SALT", SECRET)
    root = logging.getLogger()
    level = root.level
    out = io.StringIO()
    handler = configure_logging("debug", stream=out)
    yield out
    root.removeHandler(handler)
    root.setLevel(level)


def lines(out: io.StringIO) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in out.getvalue().splitlines()]


def test_one_json_object_per_line_with_extra_fields(stream: io.StringIO) -> None:
    log = logging.getLogger("gateway.test")
    log.info("hello %s", "world", extra={"request_id": "r1", "tier": "public"})
    log.debug("multi\nline")
    first, second = lines(stream)
    assert first["message"] == "hello world" and first["level"] == "INFO"
    assert first["logger"] == "gateway.test" and first["request_id"] == "r1"
    assert str(first["time"]).endswith("Z") and "T" in str(first["time"])
    assert second["message"] == "multi\nline" and len(stream.getvalue().splitlines()) == 2


def test_the_time_is_each_records_own_to_the_millisecond() -> None:
    # The formatted second is reused between lines: a new second must still show.
    formatter = JsonFormatter()
    times = []
    for created in (1_700_000_000.5, 1_700_000_000.999, 1_700_000_001.0, 86_400.25):
        record = logging.makeLogRecord({"msg": "m"})
        record.created = created
        times.append(orjson.loads(formatter.format(record))["time"])
    assert times == ["2023-11-14T22:13:20.500Z", "2023-11-14T22:13:20.999Z",
                     "2023-11-14T22:13:21.000Z", "1970-01-02T00:00:00.250Z"]


class _Label(str):
    """A str subclass, as an enum's value can be."""


def test_extra_fields_of_every_kind_are_scrubbed_or_kept(stream: io.StringIO) -> None:
    logging.getLogger("gateway.test").info("request", extra={
        "label": _Label(f"sent {JWT}"), "ok": True, "ratio": 0.5, "count": 3, "none": None,
        "pair": (JWT, 1)})
    (line,) = lines(stream)
    assert JWT not in stream.getvalue()
    assert line["label"] == f"sent {REDACTED}" and line["pair"] == [REDACTED, 1]
    assert line["ok"] is True and line["ratio"] == 0.5 and line["count"] == 3
    assert line["none"] is None


def test_planted_jwt_and_secret_never_reach_the_output(stream: io.StringIO) -> None:
    log = logging.getLogger("gateway.test")
    log.warning("auth header was Bearer %s", JWT)
    log.warning("token %s and secret %s", JWT, SECRET)
    log.info("a bare jwt: " + JWT)
    log.info("query /v1/models?access_token=abcdef123456&x=1")
    log.info("request", extra={"detail": f"sent {JWT}", "nested": {"auth": [SECRET]}})
    try:
        raise ValueError(f"could not verify {JWT} with {SECRET}")
    except ValueError:
        log.exception("verification failed")
    out = stream.getvalue()
    assert JWT not in out and SECRET not in out
    assert JWT.split(".")[1] not in out  # not even the claims segment
    assert "abcdef123456" not in out
    assert out.count(REDACTED) >= 8
    records = lines(stream)
    assert records[0]["message"] == f"auth header was Bearer {REDACTED}"
    assert "ValueError" in str(records[-1]["exception"])


def test_redactor_leaves_ordinary_text_alone() -> None:
    r = Redactor(["short", SECRET])  # too-short secrets are ignored: they would eat words
    for text in ("gateway.pipeline.upstream relay started", "model sim-llama-3-8b-instruct",
                 "the bearer token is missing", "short answer", "1.2.3"):
        assert r.scrub(text) == text
    assert r.scrub(f"Basic dXNlcjpwYXNzd29yZA== and {SECRET}") == \
        f"Basic {REDACTED} and {REDACTED}"
    assert r.scrub("see http://example.com/a@b and a@b.c") == "see http://example.com/a@b and a@b.c"


@pytest.mark.parametrize("text", [
    f"BEARER {JWT}",
    "basic dXNlcjpwYXNzd29yZA==",
    JWT,
    "aaaaaaaaaaaaaaaaaaaa.bbbbbbbbbbbbbbbbbbbb.cccccccccccccccccccc",
    "API_KEY=sk-live-0123456789",
    "postgres://u:pw@db:5432/audit",
    f"ids {SECRET}",
])
def test_every_credential_shape_is_redacted_each_time_it_is_seen(text: str) -> None:
    # Scrubbed strings are remembered: the second sight must be redacted too.
    r = Redactor([SECRET])
    first, again = r.scrub(text), r.scrub(text)
    assert first == again and REDACTED in first
    assert all(part not in first for part in (JWT, SECRET, "dXNlcjpwYXNzd29yZA==",
                                             "sk-live-0123456789", "u:pw"))


def test_the_redactors_memory_is_bounded() -> None:
    r = Redactor()
    for i in range(_REMEMBERED + 10):
        assert r.scrub(f"request-{i}") == f"request-{i}"
    assert len(r._scrubbed) <= _REMEMBERED
    long = "x" * 10_000
    assert r.scrub(long) == long and long not in r._scrubbed


def test_user_info_in_urls_is_removed() -> None:
    r = Redactor()
    assert r.scrub("fronting http://admin:pw@10.0.0.1:8000/v1, redis://:pw@r:6379") == \
        f"fronting http://{REDACTED}@10.0.0.1:8000/v1, redis://{REDACTED}@r:6379"


def test_text_mode_and_levels(monkeypatch: pytest.MonkeyPatch) -> None:
    root, level = logging.getLogger(), logging.getLogger().level
    out = io.StringIO()
    handler = configure_logging("WARNING", json=False, stream=out)
    try:
        logging.getLogger("x").info("hidden")
        logging.getLogger("x").warning("shown %s", JWT)
        assert "hidden" not in out.getvalue()
        assert "WARNING x: shown [redacted]" in out.getvalue()
        # a request line carries its fields in text too, not just the word "request"
        logging.getLogger("x").warning("request", extra={
            "request_id": "r1", "status": 502, "tokens": {"prompt": 3}, "auth": JWT})
        line = out.getvalue().splitlines()[-1]
        assert line.endswith('WARNING x: request request_id=r1 status=502 '
                             'tokens={"prompt":3} auth=[redacted]'), line
        again = configure_logging("info", stream=out)  # replaces, never duplicates
        assert handler not in root.handlers and again in root.handlers
        handler = again
        with pytest.raises(ValueError):
            configure_logging("loud")
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def test_request_log_fields_use_otel_genai_names() -> None:
    ctx = RequestContext(request_id="r9", route="completions", body={}, model="m-8b",
                         principal=Principal(sub="alice", tier="public"), tier="public",
                         usage=Usage(prompt_tokens=5, completion_tokens=7))
    fields = request_log_fields(ctx, 200, 0.25, key_id="k_abc")
    assert fields["gen_ai.operation.name"] == "text_completion"
    assert fields["gen_ai.system"] == "vllm" and fields["gen_ai.request.model"] == "m-8b"
    assert (fields["gen_ai.usage.input_tokens"], fields["gen_ai.usage.output_tokens"]) == (5, 7)
    assert fields["duration_ms"] == 250.0 and fields["key_id"] == "k_abc"
    assert "alice" not in str(fields)
    record = logging.makeLogRecord({"msg": "request", **fields})
    line = orjson.loads(JsonFormatter().format(record))
    assert line["gen_ai.request.model"] == "m-8b" and line["status"] == 200


FORGED = "x\n2026-11-28 12:00:00,000 INFO gateway.request: request status=200 \u202eabc"


def test_a_client_string_cannot_forge_a_line_or_hide_characters_in_either_format() -> None:
    """A model name is the client's: its newline would start a line of its own in text
    logs, and a right-to-left override reorders what an operator reads in both."""
    for as_json in (True, False):
        out = io.StringIO()
        handler = configure_logging("INFO", json=as_json, stream=out)
        try:
            logging.getLogger("gateway.request").info("request", extra={
                "model": FORGED, "status": 404, "tier": "public", "note": "two words"})
        finally:
            logging.getLogger().removeHandler(handler)
        text = out.getvalue()
        assert text.endswith("\n") and text.count("\n") == 1  # one line, whatever the name
        line = text.rstrip("\n")
        assert line.isprintable(), line
        if as_json:
            assert orjson.loads(line)["model"] == FORGED  # escaped, not lost
        else:
            assert line.endswith(' status=404 tier=public note="two words"'), line
            quoted = line.split("model=", 1)[1].split(" status=404")[0]
            assert orjson.loads(quoted) == FORGED
