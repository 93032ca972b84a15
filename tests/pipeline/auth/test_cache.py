"""TokenCache: bounded LRU, expiry with the token, no tokens held."""

from __future__ import annotations

from gateway.context import Principal
from gateway.pipeline.auth.cache import TokenCache
from tests.pipeline.auth.helpers import Clock


def principal(exp: float = 2000.0, sub: str = "alice") -> Principal:
    return Principal(sub=sub, tier="public", expires_at=exp)


def test_hit_and_miss() -> None:
    cache = TokenCache(clock=Clock())
    cache.put("a.b.c", principal())
    assert cache.get("a.b.c") == principal()
    assert cache.get("a.b.d") is None


def test_bounded_least_recently_used_goes_first() -> None:
    cache = TokenCache(max_entries=3, clock=Clock())
    for t in ("t1", "t2", "t3"):
        cache.put(t, principal(sub=t))
    assert cache.get("t1") is not None  # t1 is now the most recent
    cache.put("t4", principal(sub="t4"))
    assert len(cache) == 3
    assert cache.get("t2") is None
    assert [cache.get(t) for t in ("t1", "t3", "t4")] == [principal(sub=t)
                                                          for t in ("t1", "t3", "t4")]


def test_entries_expire_with_the_token() -> None:
    clock = Clock(now=1000.0)
    cache = TokenCache(clock=clock)
    cache.put("tok", principal(exp=1010.0))
    clock.now = 1009.9
    assert cache.get("tok") is not None
    clock.now = 1010.0
    assert cache.get("tok") is None and len(cache) == 0


def test_already_expired_and_disabled_are_not_stored() -> None:
    cache = TokenCache(clock=Clock(now=1000.0))
    cache.put("old", principal(exp=999.0))
    assert len(cache) == 0
    off = TokenCache(max_entries=0, clock=Clock())
    off.put("tok", principal())
    assert len(off) == 0


def test_keys_are_digests_not_tokens() -> None:
    cache = TokenCache(clock=Clock())
    cache.put("secret-token", principal())
    assert all(isinstance(k, bytes) and len(k) == 32 for k in cache._entries)
    cache.clear()
    assert len(cache) == 0
