"""Rate limits: requests and tokens per minute, tokens per day, requests in flight.

    limits.py     the contract: Limits, Admission, Ticket, the Limiter seam
    gcra.py       the arithmetic every limit shares (one number per limit)
    headers.py    OpenAI's x-ratelimit-* headers and their duration format
    memory.py     MemoryLimiter: in this process
    redis.py      RedisLimiter: shared by all replicas, one atomic script per call
    fallback.py   FallbackLimiter: what happens while Redis is down
    leases.py     Leasing: open requests keep their concurrency slots, dead gateways' free

Exact where peer gateways are loose: one shared count for all replicas (not limit x
replicas), tokens reserved at admission (prompt + max_tokens) and trued up when the
response ends, so token limits hold for streams too.
"""

from typing import TYPE_CHECKING, Any

from gateway.pipeline.ratelimit.fallback import FallbackLimiter, FallbackMode, Mode
from gateway.pipeline.ratelimit.headers import format_reset
from gateway.pipeline.ratelimit.limits import (
    Admission,
    Limiter,
    LimiterUnavailable,
    Limits,
    Refusal,
    Ticket,
)
from gateway.pipeline.ratelimit.memory import MemoryLimiter

if TYPE_CHECKING:
    from gateway.pipeline.ratelimit.redis import RedisLimiter

__all__ = [
    "Admission",
    "FallbackLimiter",
    "FallbackMode",
    "Limiter",
    "LimiterUnavailable",
    "Limits",
    "MemoryLimiter",
    "Mode",
    "RedisLimiter",
    "Refusal",
    "Ticket",
    "format_reset",
]


def __getattr__(name: str) -> Any:
    """RedisLimiter on first use: it needs the `redis` extra, which a plain install lacks."""
    if name == "RedisLimiter":
        from gateway.pipeline.ratelimit.redis import RedisLimiter

        return RedisLimiter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
