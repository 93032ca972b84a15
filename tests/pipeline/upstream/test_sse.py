import pytest

from gateway.pipeline.upstream.sse import SSEParser, frame

STREAM = (b'data: {"a": 1}\n\n'
          b": keep-alive comment\n\n"
          b'event: message\ndata: {"b":\ndata: 2}\n\n'
          b"data: [DONE]\n\n")
EXPECTED = [b'{"a": 1}', b'{"b":\n2}', b"[DONE]"]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, len(STREAM)])
def test_events_survive_any_chunking(size: int) -> None:
    parser = SSEParser()
    out: list[bytes] = []
    for i in range(0, len(STREAM), size):
        out += parser.feed(STREAM[i:i + size])
    assert out == EXPECTED
    assert not parser.pending


def test_crlf_framing() -> None:
    parser = SSEParser()
    raw = STREAM.replace(b"\n", b"\r\n")
    out: list[bytes] = []
    for i in range(len(raw)):
        out += parser.feed(raw[i:i + 1])
    assert out == EXPECTED


def test_unfinished_event_is_pending() -> None:
    parser = SSEParser()
    assert parser.feed(b'data: {"a"') == []
    assert parser.pending


def test_frame() -> None:
    assert frame(b"[DONE]") == b"data: [DONE]\n\n"


@pytest.mark.parametrize(("fed", "pending_data"), [
    (b"", False),
    (b": ping\n\n", False),
    (b": pi", False),
    (b": ping\n", False),
    (b"event: ping\n", False),
    (b"da", True),
    (b'data: {"a": ', True),
    (b': ping\n\ndata: {"a"', True),
    (b': note\ndata: {"a"', True),
    (b'data: {"a": 1}\n\n', False),  # a whole event is no longer pending
])
def test_pending_data_tells_an_event_arriving_from_a_comment(fed: bytes,
                                                             pending_data: bool) -> None:
    parser = SSEParser()
    parser.feed(fed)
    assert parser.pending_data is pending_data
