"""KeyCache against a real JWKS provider on loopback: TTL, single flight, throttle, outages."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from pathlib import Path

import aiohttp
import orjson
import pytest

from gateway.pipeline.auth.jwks import (
    KeyCache,
    KeySetUnavailable,
    file_loader,
    file_stamp,
    url_loader,
)
from gateway.pipeline.auth.keyring import Keyring
from gateway.pipeline.auth.settings import AuthSettings
from gateway.pipeline.auth.verify import AuthFailure, Verifier
from tests.pipeline.auth.conftest import Provider
from tests.pipeline.auth.helpers import ATTACKER, EC_KEY, ED_KEY, RSA_KEY, Clock, public_jwk, token

ED = public_jwk(ED_KEY, kid="ed", alg="EdDSA", use="sig")
EC = public_jwk(EC_KEY, kid="ec")  # no alg, no use: ES256 from kty/crv
RSA = public_jwk(RSA_KEY, kid="rsa")


def cache_for(session: aiohttp.ClientSession, provider: Provider, clock: Clock,
              ttl_s: float = 300, refetch_s: float = 30) -> KeyCache:
    return KeyCache("idp", url_loader(session, provider.url, 2.0), ttl_s=ttl_s,
                    refetch_s=refetch_s, clock=clock)


async def test_fetches_and_infers_algorithms(provider: Provider,
                                             session: aiohttp.ClientSession) -> None:
    provider.jwks = {"keys": [ED, EC, RSA]}
    cache = cache_for(session, provider, Clock())
    await cache.start()
    assert {k: v.alg for k, v in cache.keys.items()} == {"ed": "EdDSA", "ec": "ES256",
                                                          "rsa": "RS256"}
    verifier = Verifier(AuthSettings(), Keyring(caches=[cache]))
    for kid in ("ed", "ec", "rsa"):
        await verifier.verify(token(kid))
    assert provider.hits == 1


async def test_ttl_refresh_happens_in_the_background(provider: Provider,
                                                    session: aiohttp.ClientSession) -> None:
    provider.jwks = {"keys": [ED]}
    clock = Clock()
    cache = cache_for(session, provider, clock, ttl_s=60)
    await cache.start()
    clock.advance(59)
    assert await cache.get("ed") is not None
    assert provider.hits == 1  # still fresh
    clock.advance(2)
    provider.delay_s = 0.3
    started = time.monotonic()
    assert await cache.get("ed") is not None  # stale, but served without waiting
    assert time.monotonic() - started < 0.2
    await cache.refresh()  # joins the refresh the stale read started
    assert provider.hits == 2
    await cache.close()


async def test_unknown_kids_share_one_fetch(provider: Provider,
                                           session: aiohttp.ClientSession) -> None:
    """100 concurrent verifications with unknown kids: one request to the provider."""
    provider.jwks = {"keys": [ED]}
    cache = cache_for(session, provider, Clock())
    await cache.start()
    provider.jwks = {"keys": [ED, EC]}
    provider.delay_s = 0.05
    verifier = Verifier(AuthSettings(), Keyring(caches=[cache]))
    results = await asyncio.gather(*(verifier.verify(token("ec", jti=str(i)))
                                     for i in range(100)))
    assert len(results) == 100 and provider.hits == 2


async def test_unknown_kid_spray_is_throttled(provider: Provider,
                                             session: aiohttp.ClientSession) -> None:
    provider.jwks = {"keys": [ED]}
    clock = Clock()
    cache = cache_for(session, provider, clock, refetch_s=30)
    await cache.start()
    verifier = Verifier(AuthSettings(), Keyring(caches=[cache]))

    async def spray(n: int) -> None:
        for _ in range(n):
            tok = token("ed", headers={"kid": uuid.uuid4().hex})
            with pytest.raises(AuthFailure, match="unknown_kid"):
                await verifier.verify(tok)

    await asyncio.gather(*(spray(10) for _ in range(10)))
    assert provider.hits == 2  # start, then one refetch for the whole spray
    clock.advance(29)
    await spray(50)
    assert provider.hits == 2
    clock.advance(2)  # a new window: at most one more
    await spray(50)
    assert provider.hits == 3
    await verifier.verify(token("ed"))  # the real key never needed a fetch
    assert provider.hits == 3


async def test_provider_down_keeps_the_last_good_set(provider: Provider,
                                                    session: aiohttp.ClientSession,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    provider.jwks = {"keys": [ED]}
    clock = Clock()
    cache = cache_for(session, provider, clock, ttl_s=60, refetch_s=30)
    verifier = Verifier(AuthSettings(), Keyring(caches=[cache]))
    await cache.start()
    await provider.stop()
    for _ in range(3):
        clock.advance(61)
        cache.poke()
        await cache.refresh()  # fails: connection refused
        assert (await verifier.verify(token("ed", jti=str(clock.now)))).sub == "alice"
    assert "keeping 1 known keys" in caplog.text
    assert cache.fetches == 4


@pytest.mark.parametrize("status, body", [
    (500, None), (404, None), (200, b"<html>login</html>"), (200, b'{"keys": []}'),
    (200, b'{"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "ed", "alg": "HS256"}]}'),
    (200, b"[]"), (200, b"x" * (1024 * 1024 + 10)),
])
async def test_bad_answers_keep_the_last_good_set(provider: Provider,
                                                 session: aiohttp.ClientSession,
                                                 status: int, body: bytes | None) -> None:
    provider.jwks = {"keys": [ED]}
    cache = cache_for(session, provider, Clock())
    await cache.start()
    provider.status, provider.body = status, body
    await cache.refresh()
    assert cache.fetches == 2 and (await cache.get("ed")) is not None
    assert cache.keys["ed"].alg == "EdDSA"


async def test_provider_down_at_start_is_not_fatal(provider: Provider,
                                                  session: aiohttp.ClientSession) -> None:
    provider.status = 503
    clock = Clock()
    cache = cache_for(session, provider, clock, refetch_s=30)
    await cache.start()
    assert not cache.keys
    for _ in range(5):
        assert await cache.get("ed") is None  # one more try, then none in this window
    assert provider.hits == 2
    provider.status, provider.jwks = 200, {"keys": [ED]}
    clock.advance(30)
    assert await cache.get("ed") is not None
    assert provider.hits == 3


async def test_rotation_new_kid_picked_up_old_kid_dropped(provider: Provider,
                                                         session: aiohttp.ClientSession) -> None:
    provider.jwks = {"keys": [ED]}
    clock = Clock()
    cache = cache_for(session, provider, clock, ttl_s=60)
    verifier = Verifier(AuthSettings(), Keyring(caches=[cache]))
    await cache.start()
    old = token("ed")
    await verifier.verify(old)
    await verifier.verify(old)  # cached
    # The provider publishes the next key: tokens under it work before our TTL runs out.
    provider.jwks = {"keys": [ED, EC]}
    await verifier.verify(token("ec"))
    assert provider.hits == 2
    # Then retires the old one: after the next refresh even the cached verdict is gone.
    provider.jwks = {"keys": [EC]}
    clock.advance(61)
    cache.poke()
    await cache.refresh()
    with pytest.raises(AuthFailure, match="unknown_kid"):
        await verifier.verify(old)


async def test_same_keys_refetched_keep_the_cache(provider: Provider,
                                                 session: aiohttp.ClientSession) -> None:
    provider.jwks = {"keys": [ED]}
    clock = Clock()
    cache = cache_for(session, provider, clock, ttl_s=60)
    verifier = Verifier(AuthSettings(), Keyring(caches=[cache]))
    await cache.start()
    tok = token("ed")
    await verifier.verify(tok)
    clock.advance(61)
    cache.poke()
    await cache.refresh()
    await verifier.verify(tok)
    assert provider.hits == 2 and cache.generation == 1 and verifier.signature_checks == 1


async def test_kid_reused_for_another_key_invalidates_cached_verdicts(
        provider: Provider, session: aiohttp.ClientSession) -> None:
    provider.jwks = {"keys": [ED]}
    cache = cache_for(session, provider, Clock())
    verifier = Verifier(AuthSettings(), Keyring(caches=[cache]))
    await cache.start()
    tok = token("ed")
    await verifier.verify(tok)
    provider.jwks = {"keys": [public_jwk(ATTACKER, kid="ed", alg="EdDSA")]}
    await cache.refresh()
    with pytest.raises(AuthFailure, match="bad_signature"):
        await verifier.verify(tok)


async def test_enc_keys_are_ignored(provider: Provider, session: aiohttp.ClientSession) -> None:
    provider.jwks = {"keys": [ED, public_jwk(EC_KEY, kid="ec", use="enc")]}
    cache = cache_for(session, provider, Clock())
    verifier = Verifier(AuthSettings(), Keyring(caches=[cache]))
    await cache.start()
    assert set(cache.keys) == {"ed"}
    with pytest.raises(AuthFailure, match="unknown_kid"):
        await verifier.verify(token("ec"))


async def test_no_decompression_needed(provider: Provider,
                                       session: aiohttp.ClientSession) -> None:
    """The gateway's session does not decompress, so the fetch asks for identity."""
    provider.jwks, provider.compress = {"keys": [ED]}, True
    cache = cache_for(session, provider, Clock())
    await cache.start()
    assert set(cache.keys) == {"ed"}


async def test_a_cancelled_waiter_does_not_cancel_the_fetch(
        provider: Provider, session: aiohttp.ClientSession) -> None:
    provider.jwks, provider.delay_s = {"keys": [ED]}, 0.2
    cache = cache_for(session, provider, Clock())
    waiter = asyncio.create_task(cache.get("ed"))
    await asyncio.sleep(0.05)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert await cache.get("ed") is not None  # joins the same fetch, which completed
    assert provider.hits == 1


async def test_file_source_and_rotation_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_bytes(orjson.dumps({"keys": [ED]}))
    clock = Clock()
    cache = KeyCache(str(path), file_loader(path), ttl_s=300, refetch_s=30, required=True,
                     clock=clock)
    await cache.start()
    assert set(cache.keys) == {"ed"}
    path.write_bytes(orjson.dumps({"keys": [ED, RSA]}))  # a mounted Secret is updated
    assert await cache.get("rsa") is not None


async def test_required_file_missing_fails_start(tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    path = tmp_path / "absent.json"
    cache = KeyCache(str(path), file_loader(path), ttl_s=300, refetch_s=30, required=True)
    with pytest.raises(KeySetUnavailable):
        await cache.start()


async def test_a_changed_file_is_read_again_despite_a_recent_miss(tmp_path: Path) -> None:
    """A token with the new kid came before the Secret was updated: its miss throttled the
    next reads for refetch_s (30 s), so the rotated key was refused long after it landed
    (found by a black-box check). The file's change is now enough."""
    path = tmp_path / "jwks.json"
    path.write_bytes(orjson.dumps({"keys": [ED]}))
    clock = Clock()
    cache = KeyCache(str(path), file_loader(path), ttl_s=300, refetch_s=30, required=True,
                     clock=clock, stamp=file_stamp([path]))
    await cache.start()
    assert await cache.get("rsa") is None  # not there yet: a miss, and the throttle starts
    path.write_bytes(orjson.dumps({"keys": [ED, RSA]}))
    clock.advance(1.5)
    assert await cache.get("rsa") is not None


async def test_a_key_removed_from_the_file_goes_within_a_check(tmp_path: Path) -> None:
    """Withdrawing a leaked key from the file took up to the TTL (300 s) to take effect."""
    path = tmp_path / "jwks.json"
    path.write_bytes(orjson.dumps({"keys": [ED, RSA]}))
    clock = Clock()
    cache = KeyCache(str(path), file_loader(path), ttl_s=300, refetch_s=30, required=True,
                     clock=clock, stamp=file_stamp([path]))
    await cache.start()
    generation = cache.generation
    path.write_bytes(orjson.dumps({"keys": [ED]}))
    clock.advance(0.5)
    assert await cache.get("ed") is not None
    assert cache.fetches == 1  # looked at most once per stamp_check_s
    clock.advance(1)
    assert await cache.get("ed") is not None  # its poke sees the change: re-read
    await cache.refresh()
    assert set(cache.keys) == {"ed"} and cache.generation == generation + 1
    assert await cache.get("rsa") is None
