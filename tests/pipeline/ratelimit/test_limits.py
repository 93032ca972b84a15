"""The Limiter contract, as one behaviour table run against every limiter.

Each row is a script of admissions and settlements on one limiter, with what each
admission must answer. Rows run in milliseconds, far less than a bucket refills, and
margins are chosen so that a slow machine's refill cannot change an answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from gateway.pipeline.ratelimit import Limiter, Limits, Ticket


@dataclass(frozen=True)
class Admit:
    tokens: int = 0
    refused: str | None = None
    key: str = "tenant"


@dataclass(frozen=True)
class Settle:
    admission: int  # index among the row's admissions
    used: int


Step = Admit | Settle

TABLE: list[tuple[str, Limits, list[Step]]] = [
    ("requests: a burst of the limit, then refused",
     Limits(requests_per_minute=3), [Admit(), Admit(), Admit(), Admit(refused="requests")]),
    ("requests: keys are counted apart",
     Limits(requests_per_minute=1),
     [Admit(), Admit(key="other"), Admit(refused="requests")]),
    ("requests: settling does not give the request back",
     Limits(requests_per_minute=1), [Admit(5), Settle(0, 0), Admit(refused="requests")]),
    ("tokens: the reservation is charged at admission",
     Limits(tokens_per_minute=1000), [Admit(600), Admit(600, "tokens"), Admit(300)]),
    ("tokens: settle refunds what was not used",
     Limits(tokens_per_minute=1000),
     [Admit(600), Admit(600, "tokens"), Settle(0, 100), Admit(600), Admit(450, "tokens")]),
    ("tokens: a refund never fills past the limit, and settles once",
     Limits(tokens_per_minute=1000),
     [Admit(500), Settle(0, 0), Settle(0, 0), Admit(1000), Admit(100, "tokens")]),
    ("tokens: use beyond the reservation is charged",
     Limits(tokens_per_minute=1000),
     [Admit(100), Settle(0, 700), Admit(400, "tokens"), Admit(250)]),
    ("tokens: a request larger than the whole limit is refused",
     Limits(tokens_per_minute=1000), [Admit(1001, "tokens"), Admit(1000)]),
    ("tokens per day: its own bucket",
     Limits(tokens_per_day=1000),
     [Admit(900), Admit(200, "tokens_per_day"), Settle(0, 700), Admit(200),
      Admit(200, "tokens_per_day")]),
    ("tokens per day: larger than the day's quota",
     Limits(tokens_per_minute=1000, tokens_per_day=500), [Admit(600, "tokens_per_day")]),
    ("concurrent: slots are taken and freed",
     Limits(concurrent_requests=2),
     [Admit(), Admit(), Admit(refused="concurrent"), Settle(0, 0), Admit(),
      Admit(refused="concurrent")]),
    ("concurrent: a second settle frees nothing",
     Limits(concurrent_requests=1),
     [Admit(), Settle(0, 0), Settle(0, 0), Admit(), Admit(refused="concurrent")]),
    ("atomic: refused by tokens charges no request",
     Limits(requests_per_minute=2, tokens_per_minute=1000),
     [Admit(800), Admit(800, "tokens"), Admit(100), Admit(refused="requests")]),
    ("atomic: refused by concurrency charges no tokens",
     Limits(concurrent_requests=1, tokens_per_minute=1000),
     [Admit(100), Admit(100, "concurrent"), Settle(0, 100), Admit(900)]),
    ("atomic: refused by tokens takes no slot",
     Limits(concurrent_requests=1, tokens_per_minute=1000),
     [Admit(1001, "tokens"), Admit(10), Admit(10, "concurrent")]),
    ("atomic: refused by the day charges the minute nothing",
     Limits(tokens_per_minute=1000, tokens_per_day=1500),
     [Admit(900), Settle(0, 900), Admit(700, "tokens_per_day"), Admit(100)]),
    ("the longest wait names the refusal",
     Limits(requests_per_minute=1, tokens_per_day=100),
     [Admit(100), Admit(1, "tokens_per_day")]),
    ("no limits: everything passes",
     Limits(), [Admit(10**9), Admit(10**9), Settle(0, 5)]),
]


@pytest.mark.parametrize(("limits", "steps"), [row[1:] for row in TABLE],
                         ids=[row[0] for row in TABLE])
async def test_behaviour(limiter: Limiter, limits: Limits, steps: list[Step]) -> None:
    tickets: list[Ticket | None] = []
    for number, step in enumerate(steps):
        if isinstance(step, Settle):
            ticket = tickets[step.admission]
            assert ticket is not None
            await limiter.settle(ticket, step.used)
            continue
        admission = await limiter.admit(step.key, limits, step.tokens)
        assert admission.refused == step.refused, f"step {number}: {step}"
        assert admission.allowed is (step.refused is None)
        assert (admission.ticket is not None) is admission.allowed
        tickets.append(admission.ticket)


async def test_retry_after_for_requests(limiter: Limiter) -> None:
    limits = Limits(requests_per_minute=3)
    for _ in range(3):
        assert (await limiter.admit("t", limits, 0)).allowed
    refusal = await limiter.admit("t", limits, 0)
    assert 19.0 < refusal.retry_after_s <= 20.0
    assert "3 requests per minute" in refusal.message
    assert refusal.headers["x-ratelimit-remaining-requests"] == "0"


async def test_retry_after_for_tokens(limiter: Limiter) -> None:
    limits = Limits(tokens_per_minute=600)
    assert (await limiter.admit("t", limits, 600)).allowed
    refusal = await limiter.admit("t", limits, 60)
    assert refusal.refused == "tokens"
    assert 5.0 < refusal.retry_after_s <= 6.0
    assert "600 tokens per minute" in refusal.message


async def test_a_request_larger_than_the_limit_says_so(limiter: Limiter) -> None:
    refusal = await limiter.admit("t", Limits(tokens_per_minute=1000), 4000)
    assert refusal.refused == "tokens"
    assert refusal.retry_after_s == 0.0  # the bucket is full: waiting does not help
    assert "can never be admitted" in refusal.message
    assert "4000" in refusal.message


async def test_concurrency_refusal(limiter: Limiter) -> None:
    limits = Limits(concurrent_requests=1)
    assert (await limiter.admit("t", limits, 0)).allowed
    refusal = await limiter.admit("t", limits, 0)
    assert (refusal.refused, refusal.retry_after_s) == ("concurrent", 1.0)
    assert "at most 1 at once" in refusal.message


async def test_headers_of_a_fresh_key(limiter: Limiter) -> None:
    admission = await limiter.admit("t", Limits(requests_per_minute=100,
                                                tokens_per_minute=1000), 100)
    assert admission.headers == {
        "x-ratelimit-limit-requests": "100",
        "x-ratelimit-remaining-requests": "99",
        "x-ratelimit-reset-requests": "600ms",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "900",
        "x-ratelimit-reset-tokens": "6s",
    }


async def test_refusal_headers_show_the_uncharged_state(limiter: Limiter) -> None:
    limits = Limits(requests_per_minute=100, tokens_per_minute=1000)
    await limiter.admit("t", limits, 900)
    refusal = await limiter.admit("t", limits, 500)
    assert refusal.headers["x-ratelimit-remaining-requests"] == "99"
    assert refusal.headers["x-ratelimit-remaining-tokens"] == "100"


async def test_negative_tokens_are_a_bug(limiter: Limiter) -> None:
    with pytest.raises(ValueError, match="negative"):
        await limiter.admit("t", Limits(tokens_per_minute=10), -1)


@pytest.mark.parametrize("bad", [0, -1, True, 1.5])
def test_limits_must_be_positive_integers(bad: object) -> None:
    with pytest.raises(ValueError, match="requests_per_minute"):
        Limits(requests_per_minute=bad)  # type: ignore[arg-type]


def test_limits_divided_across_replicas() -> None:
    limits = Limits(requests_per_minute=10, tokens_per_minute=1, concurrent_requests=4)
    assert limits.divided(3) == Limits(requests_per_minute=4, tokens_per_minute=1,
                                       concurrent_requests=2)
