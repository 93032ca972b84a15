"""Every rate limit as one number: the time at which its bucket is full again.

A limit of C units per period P is a bucket holding at most C, refilling continuously at
C/P; there are no window edges, so no double burst at a boundary. GCRA (the generic cell
rate algorithm) stores, instead of a level and a timestamp, the theoretical arrival time
TAT at which the bucket is full again; its level at `now` is C - max(0, TAT - now) * C/P.

    spend n:   allowed if max(TAT, now) + n*P/C - now <= P   (the bucket holds n)
               then TAT = max(TAT, now) + n*P/C
    refund n:  TAT = max(TAT - n*P/C, now)                    (never above C)
    charge n:  TAT = max(TAT, now) + n*P/C, unconditionally   (usage past the reservation)

Requests spend 1 (so a burst of the whole per-minute limit, then one every P/C seconds:
over any window of w seconds at most C + w*C/P pass); tokens spend the reservation. A TAT
in the past means "full", so a store may forget a key once its TAT has passed. admit.lua
and settle.lua hold the same arithmetic, in microseconds of Redis server time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Literal

RateName = Literal["requests", "tokens", "tokens_per_day"]

MINUTE_S: Final = 60.0
DAY_S: Final = 86_400.0
# Float rounding (3 * 0.6 != 1.8) must not refuse the request that exactly fills a bucket;
# a microsecond of slack is far below anything a client could exploit.
EPSILON_S: Final = 1e-6


@dataclass(frozen=True, slots=True)
class Rate:
    name: RateName
    capacity: int
    period: float

    def units(self, tokens: int) -> int:
        return 1 if self.name == "requests" else tokens

    def increment(self, units: float) -> float:
        """Seconds of TAT that `units` are worth."""
        return units * self.period / self.capacity

    def remaining(self, offset: float) -> int:
        """Whole units the bucket holds when it is `offset` seconds from full."""
        level = (self.period - offset) * self.capacity / self.period
        return min(self.capacity, max(0, math.floor(level + 1e-6)))


def offset(tat: float, now: float) -> float:
    """Seconds until the bucket is full again (the x-ratelimit-reset-* value)."""
    return max(0.0, tat - now)


def wait(tat: float, now: float, increment: float, period: float) -> float:
    """Seconds until `increment` fits in the bucket; 0.0 when it fits now."""
    over = offset(tat, now) + increment - period
    return over if over > EPSILON_S else 0.0


def charge(tat: float, now: float, increment: float) -> float:
    return max(tat, now) + increment


def refund(tat: float, now: float, increment: float) -> float:
    return max(tat - increment, now)
