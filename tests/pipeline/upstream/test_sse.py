import pytest

from gateway.pipeline.upstream.sse import EventTooLarge, SSEParser, frame

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
    bytewise = SSEParser()  # the same, read a byte at a time (pieces without a line end)
    for i in range(len(fed)):
        bytewise.feed(fed[i:i + 1])
    assert bytewise.pending_data is pending_data


def test_a_large_event_in_many_pieces_is_one_payload() -> None:
    payload = b'{"text": "' + b"x" * 4_000_000 + b'"}'
    raw = b": ping\n\ndata: " + payload + b"\n\ndata: [DONE]\n\n"
    parser = SSEParser()
    out: list[bytes] = []
    for i in range(0, len(raw), 4096):
        out += parser.feed(raw[i:i + 4096])
        if len(out) == 0 and i > 100:
            assert parser.pending_data
    assert out == [payload, b"[DONE]"]
    assert not parser.pending


@pytest.mark.parametrize("piece", [10, 1000])
def test_an_event_that_never_ends_is_refused_past_the_bound(piece: int) -> None:
    parser = SSEParser(max_event_bytes=5_000)
    parser.feed(b"data: " + b"y" * 4_000)  # under the bound: kept
    with pytest.raises(EventTooLarge):
        for _ in range(100):
            parser.feed(b"y" * piece)
    bounded = SSEParser(max_event_bytes=5_000)
    assert bounded.feed(b"data: " + b"z" * 4_000 + b"\n\n") == [b"z" * 4_000]
