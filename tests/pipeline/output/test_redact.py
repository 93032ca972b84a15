import pytest

from gateway.pipeline.output import FilterChain
from gateway.pipeline.output.redact import RedactFilter


def _stream(chain: FilterChain, deltas: list[str]) -> str:
    return "".join(chain.feed(d) for d in deltas) + chain.finish()


@pytest.mark.parametrize(
    "deltas",
    [
        ["the secret plan"],
        ["the sec", "ret plan"],
        ["the s", "e", "c", "r", "e", "t", " plan"],
        list("the secret plan"),
    ],
)
def test_terms_split_across_chunks_are_redacted(deltas: list[str]) -> None:
    chain = FilterChain((RedactFilter(("secret",)),))
    assert _stream(chain, deltas) == "the [redacted] plan"


def test_partial_match_at_end_is_released_by_finish() -> None:
    f = RedactFilter(("secret",))
    assert f.feed("a sec") == "a "
    assert f.finish() == "sec"


def test_text_without_terms_passes_unchanged_and_unheld() -> None:
    f = RedactFilter(("secret", "password"))
    assert f.feed("hello world") == "hello world"
    assert f.finish() == ""


def test_chain_feeds_tail_of_first_filter_through_second() -> None:
    chain = FilterChain((RedactFilter(("ab",)), RedactFilter(("[redacted]c",))))
    assert _stream(chain, ["x a", "b", "c"]) == "x [redacted]"


def test_whole_text_apply_equals_streaming() -> None:
    text = "one secret, two secrets, secre"
    whole = FilterChain((RedactFilter(("secret",)),)).apply(text)
    streamed = _stream(FilterChain((RedactFilter(("secret",)),)), list(text))
    assert whole == streamed == "one [redacted], two [redacted]s, secre"


def test_a_chain_with_redaction_hides_text_one_that_only_adds_does_not() -> None:
    """The relay drops logprobs beside a chain that hides text: they would spell it out."""
    class Adds:
        def feed(self, delta: str) -> str:
            return delta + "\u200b"

        def finish(self) -> str:
            return ""

    assert FilterChain((Adds(), RedactFilter(("secret",)))).hides_text
    assert not FilterChain((Adds(),)).hides_text
