"""MemoryLimiter's arithmetic, checked as properties over random histories on a fake clock."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.pipeline.ratelimit import Limits, MemoryLimiter, Ticket
from gateway.pipeline.ratelimit.gcra import EPSILON_S

PROPERTY = settings(max_examples=100, deadline=None)


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@PROPERTY
@given(limit=st.integers(1, 12),
       gaps=st.lists(st.floats(0, 20, allow_nan=False), min_size=1, max_size=80))
async def test_requests_never_exceed_the_burst_plus_the_rate(limit: int,
                                                             gaps: list[float]) -> None:
    """In any window of w seconds at most limit + w*limit/60 requests pass (a burst of the
    whole limit, then the rate); in particular never more than `limit` at one instant."""
    clock = Clock()
    limiter = MemoryLimiter(clock=clock)
    limits = Limits(requests_per_minute=limit)
    passed: list[float] = []
    for gap in gaps:
        clock.now += gap
        if (await limiter.admit("k", limits, 0)).allowed:
            passed.append(clock.now)
    for i, start in enumerate(passed):
        for j in range(i, len(passed)):
            allowed = limit + (passed[j] - start + EPSILON_S) * limit / 60.0
            assert j - i + 1 <= allowed + 1e-9


@PROPERTY
@given(limit=st.integers(1, 2000), tokens=st.integers(0, 2000),
       history=st.lists(st.tuples(st.floats(0, 30, allow_nan=False), st.integers(0, 2000)),
                        max_size=20))
async def test_retry_after_is_exact(limit: int, tokens: int,
                                    history: list[tuple[float, int]]) -> None:
    """A refused request passes once retry_after has gone by, and not a millisecond before."""
    clock = Clock()
    limiter = MemoryLimiter(clock=clock)
    limits = Limits(requests_per_minute=max(1, limit // 100), tokens_per_minute=limit)
    for gap, reserve in history:
        clock.now += gap
        await limiter.admit("k", limits, reserve)
    refusal = await limiter.admit("k", limits, tokens)
    if refusal.allowed or tokens > limit:
        return
    assert refusal.retry_after_s > 0
    if refusal.retry_after_s > 0.002:
        clock.now += refusal.retry_after_s - 0.001
        assert not (await limiter.admit("k", limits, tokens)).allowed
        clock.now += 0.001
    else:
        clock.now += refusal.retry_after_s
    assert (await limiter.admit("k", limits, tokens)).allowed


Op = tuple[str, int, int]  # ("admit", tokens, _) | ("settle", admission, used) | ("wait", s, _)
OPS = st.one_of(
    st.tuples(st.just("admit"), st.integers(0, 1200), st.just(0)),
    st.tuples(st.just("settle"), st.integers(0, 40), st.integers(0, 1500)),
    st.tuples(st.just("wait"), st.integers(0, 40), st.just(0)),
)


@PROPERTY
@given(capacity=st.integers(1, 1000), ops=st.lists(OPS, max_size=40))
async def test_tokens_exactly_as_reserved_refunded_and_charged(capacity: int,
                                                               ops: list[Op]) -> None:
    """At one instant (no refill) a model in whole tokens predicts every answer: a request
    passes iff the bucket holds its reservation, a settle refunds reserved - used at most
    once and never above capacity, use beyond the reservation is charged."""
    limiter = MemoryLimiter(clock=Clock())
    limits = Limits(tokens_per_minute=capacity)
    level = capacity
    tickets: list[Ticket] = []
    settled: set[int] = set()
    for op, a, b in ops:
        if op == "admit":
            admission = await limiter.admit("k", limits, a)
            assert admission.allowed is (a <= level), (a, level)
            if admission.ticket is not None:
                level -= a
                tickets.append(admission.ticket)
                assert admission.headers["x-ratelimit-remaining-tokens"] == str(max(0, level))
        elif op == "settle" and a < len(tickets):
            await limiter.settle(tickets[a], b)
            if a not in settled:
                settled.add(a)
                level = min(capacity, level + tickets[a].reserved - b)
    for index, ticket in enumerate(tickets):
        if index not in settled:
            await limiter.settle(ticket, ticket.reserved)
    admission = await limiter.admit("k", limits, 0)
    assert admission.allowed is (level >= 0)
    assert admission.headers["x-ratelimit-remaining-tokens"] == str(max(0, level))


@PROPERTY
@given(capacity=st.integers(1, 1000), ops=st.lists(OPS, max_size=40))
async def test_tokens_over_time(capacity: int, ops: list[Op]) -> None:
    """Over any stretch (a, b] ending at an admission, what was reserved and charged is at
    most a full bucket plus the refill plus what was refunded; and however the history
    went, a rested bucket holds exactly `capacity` tokens, never more. Open tickets are
    renewed before each wait, as the gateway renews its running requests' leases: a
    settle after a lease ran out adjusts nothing (test_leases), which this model omits."""
    clock = Clock()
    limiter = MemoryLimiter(clock=clock)
    limits = Limits(tokens_per_minute=capacity)
    rate = capacity / 60.0
    events: list[tuple[float, int]] = []  # (time, tokens spent; a refund is negative)
    tickets: list[Ticket] = []
    settled: set[int] = set()
    for op, a, b in ops:
        if op == "wait":
            await limiter.renew([t for i, t in enumerate(tickets) if i not in settled])
            clock.now += a  # at most 40 s: less than a lease
        elif op == "admit":
            admission = await limiter.admit("k", limits, a)
            if admission.ticket is None:
                continue
            tickets.append(admission.ticket)
            events.append((clock.now, a))
            # after any earlier event the bucket held at most `capacity`
            spent = 0
            for when, tokens in reversed(events):
                assert spent <= capacity + (clock.now - when + EPSILON_S) * rate + 1e-6
                spent += tokens
            assert spent <= capacity + (clock.now - 1000.0 + EPSILON_S) * rate + 1e-6
        elif op == "settle" and a < len(tickets):
            await limiter.settle(tickets[a], b)
            if a not in settled:
                settled.add(a)
                events.append((clock.now, b - tickets[a].reserved))
    # Rested: long enough to refill everything spent, a charge past the reservation too.
    spent_at_all = sum(tokens for _, tokens in events if tokens > 0)
    clock.now += 60.0 + spent_at_all * 60.0 / capacity
    assert (await limiter.admit("k", limits, capacity)).allowed
    assert not (await limiter.admit("k", limits, 1)).allowed


@PROPERTY
@given(slots=st.integers(1, 5),
       ops=st.lists(st.tuples(st.booleans(), st.integers(0, 30)), max_size=40))
async def test_concurrency_counts_exactly(slots: int, ops: list[tuple[bool, int]]) -> None:
    """A request passes iff fewer than `slots` are open; a settle closes one at most once."""
    limiter = MemoryLimiter(clock=Clock())
    limits = Limits(concurrent_requests=slots)
    tickets: list[Ticket] = []
    open_ids: set[str] = set()
    for admit, index in ops:
        if admit:
            admission = await limiter.admit("k", limits, 0)
            assert admission.allowed is (len(open_ids) < slots)
            if admission.ticket is not None:
                tickets.append(admission.ticket)
                open_ids.add(admission.ticket.id)
        elif index < len(tickets):
            await limiter.settle(tickets[index], 0)
            open_ids.discard(tickets[index].id)


async def test_a_lease_outlives_a_lost_settle_only_so_long() -> None:
    clock = Clock()
    limiter = MemoryLimiter(clock=clock, lease_s=600.0)
    limits = Limits(concurrent_requests=1, tokens_per_minute=1000)
    lost = await limiter.admit("k", limits, 100)
    assert lost.ticket is not None
    assert not (await limiter.admit("k", limits, 0)).allowed
    clock.now += 600.0
    fresh = await limiter.admit("k", limits, 0)
    assert fresh.allowed
    await limiter.settle(lost.ticket, 0)  # too late: no refund, and the new slot stays taken
    assert not (await limiter.admit("k", limits, 0)).allowed


async def test_idle_keys_are_forgotten() -> None:
    clock = Clock()
    limiter = MemoryLimiter(clock=clock, lease_s=1e9)
    limits = Limits(requests_per_minute=10, tokens_per_day=1000)
    for n in range(100):
        ticket = (await limiter.admit(f"one-off-{n}", limits, 10)).ticket
        assert ticket is not None
        await limiter.settle(ticket, 5)
    held = await limiter.admit("held", Limits(concurrent_requests=1), 0)
    assert len(limiter) == 101
    clock.now += 120.0  # the minute buckets are full again, the day's are not
    await limiter.admit("another", limits, 0)
    assert len(limiter) == 102
    clock.now += 86_400.0
    await limiter.admit("another", limits, 0)
    assert len(limiter) == 2  # "held" has an open slot; "another" was just used
    assert held.ticket is not None
