"""The limiter's contract: what a tenant may spend, what an admission answers, the seam.

A request is admitted against every limit at once, before it reaches the backend: one
request is charged to the requests limit, and its *reservation* (prompt tokens plus
max_tokens) to both token limits. Either every counter is charged or none is. When the
response ends, or a stream is cut, `settle` trues the reservation up to what was really
used and frees the concurrency slot. Tokens are thus counted from the moment a request
is admitted, not once its response is over, and token limits hold for streams too.

A refusal names the limit that holds the request back longest and the wait until this
very request could pass. A reservation larger than a whole token limit can never pass; it
is refused as "tokens" (or "tokens_per_day") with a message saying so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Final, Literal, Protocol

from gateway.pipeline.ratelimit.gcra import DAY_S, MINUTE_S, Rate
from gateway.pipeline.ratelimit.headers import format_reset, rate_headers

Refusal = Literal["requests", "tokens", "concurrent", "tokens_per_day", "store_unavailable"]
Source = Literal["memory", "redis", "none"]

# A slot frees when some other response of the tenant ends, which nobody can predict;
# a nominal second keeps well-behaved clients from hammering.
CONCURRENT_RETRY_S: Final = 1.0
# How long a concurrency slot (and the right to a refund) outlives a gateway that
# crashed without settling; a live gateway renews its open requests' leases (leases.py).
LEASE_S: Final = 60.0


class LimiterUnavailable(Exception):
    """The shared store did not answer (error or timeout). FallbackLimiter handles it."""


@dataclass(frozen=True, slots=True)
class Limits:
    """What one key may spend; a field left None is unlimited. Set fields are >= 1."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    concurrent_requests: int | None = None
    tokens_per_day: int | None = None

    def __post_init__(self) -> None:
        for name in ("requests_per_minute", "tokens_per_minute", "concurrent_requests",
                     "tokens_per_day"):
            value = getattr(self, name)
            if value is not None and (type(value) is not int or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, not {value!r}")

    @property
    def unlimited(self) -> bool:
        return (self.requests_per_minute is None and self.tokens_per_minute is None
                and self.concurrent_requests is None and self.tokens_per_day is None)

    @property
    def settles(self) -> bool:
        """Whether settle has anything to do: a reservation to true up or a slot to free."""
        return (self.tokens_per_minute is not None or self.tokens_per_day is not None
                or self.concurrent_requests is not None)

    def rates(self) -> tuple[Rate, ...]:
        """The rate limits that are set, in the order refusals are reported on ties."""
        return _rates(self)

    def divided(self, replicas: int) -> Limits:
        """Each limit split across `replicas` processes, rounded up, at least 1."""
        def part(value: int | None) -> int | None:
            return None if value is None else max(1, math.ceil(value / replicas))

        return Limits(part(self.requests_per_minute), part(self.tokens_per_minute),
                      part(self.concurrent_requests), part(self.tokens_per_day))


# Policies hold a handful of distinct Limits; the hot path asks on every call.
@lru_cache(maxsize=1024)
def _rates(limits: Limits) -> tuple[Rate, ...]:
    rates = []
    if limits.requests_per_minute is not None:
        rates.append(Rate("requests", limits.requests_per_minute, MINUTE_S))
    if limits.tokens_per_minute is not None:
        rates.append(Rate("tokens", limits.tokens_per_minute, MINUTE_S))
    if limits.tokens_per_day is not None:
        rates.append(Rate("tokens_per_day", limits.tokens_per_day, DAY_S))
    return tuple(rates)


@dataclass(frozen=True, slots=True)
class Ticket:
    """An admitted request's claim, handed back to `settle` once it ends."""

    id: str  # "" when settle has nothing to do
    key: str
    limits: Limits  # as admitted: settle uses these even if the policy changed since
    reserved: int
    source: Source  # which store charged it, so a FallbackLimiter settles it there


@dataclass(frozen=True, slots=True)
class Admission:
    allowed: bool
    refused: Refusal | None
    retry_after_s: float  # when refused: time until this request could pass
    headers: dict[str, str]  # x-ratelimit-* for the limits that are set
    ticket: Ticket | None  # set exactly when allowed
    message: str = ""  # when refused: a sentence written for the client


class Limiter(Protocol):
    async def admit(self, key: str, limits: Limits, tokens: int) -> Admission:
        """Charge one request and `tokens` (the reservation) to every limit of `key`, or
        nothing at all; take a concurrency slot when allowed."""
        ...

    async def settle(self, ticket: Ticket, used_tokens: int) -> None:
        """Refund reserved - used (or charge the excess) and free the slot. Idempotent."""
        ...

    async def renew(self, tickets: Sequence[Ticket]) -> None:
        """Extend the leases of tickets whose requests are still open (settled ones stay
        settled). May raise LimiterUnavailable."""
        ...

    async def close(self) -> None: ...


def check_tokens(tokens: int) -> None:
    if tokens < 0:
        raise ValueError(f"a token count cannot be negative: {tokens}")


def unmetered(key: str, limits: Limits, tokens: int) -> Admission:
    """Allowed with nothing counted: no limits set, or a store failing open."""
    return Admission(True, None, 0.0, {}, Ticket("", key, limits, tokens, "none"))


def admitted(ticket: Ticket, offsets: Mapping[str, float]) -> Admission:
    return Admission(True, None, 0.0, rate_headers(ticket.limits.rates(), offsets), ticket)


def refused(limits: Limits, tokens: int, waits: Mapping[Refusal, float],
            offsets: Mapping[str, float], too_large: Refusal | None) -> Admission:
    """The refusal for the limit that holds the request back longest.

    `waits` has every limit that refused. A reservation larger than a whole limit can never
    pass: it is named in `too_large`, its wait is the time until the bucket is full (the
    best a client can do), and the message says to ask for fewer tokens.
    """
    headers = rate_headers(limits.rates(), offsets)
    if too_large is not None:
        capacity = limits.tokens_per_minute if too_large == "tokens" else limits.tokens_per_day
        per = "minute" if too_large == "tokens" else "day"
        message = (f"This request reserves {tokens} tokens (prompt plus max_tokens), more than "
                   f"the limit of {capacity} tokens per {per}, so it can never be admitted; "
                   f"lower max_tokens or shorten the prompt.")
        return Admission(False, too_large, waits[too_large], headers, None, message)
    name = max(waits, key=lambda n: waits[n])  # first of the longest, in `rates()` order
    wait = waits[name]
    return Admission(False, name, wait, headers, None, _message(name, limits, tokens, wait))


def _message(name: Refusal, limits: Limits, tokens: int, wait: float) -> str:
    later = f"try again in {format_reset(wait)}."
    if name == "requests":
        return f"Rate limit reached: {limits.requests_per_minute} requests per minute; {later}"
    if name == "tokens":
        return (f"Rate limit reached: {limits.tokens_per_minute} tokens per minute (this "
                f"request reserves {tokens}: prompt plus max_tokens); {later}")
    if name == "tokens_per_day":
        return (f"Daily token quota reached: {limits.tokens_per_day} tokens per day (this "
                f"request reserves {tokens}); {later}")
    return (f"Too many requests in flight: at most {limits.concurrent_requests} at once; "
            f"try again when one finishes.")

