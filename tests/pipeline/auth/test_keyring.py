"""Keyring: static keys first, then refreshing sources; no kid only with a single key."""

from __future__ import annotations

from pathlib import Path

import orjson

from gateway.pipeline.auth.jwks import KeyCache, file_loader
from gateway.pipeline.auth.keyring import Keyring
from tests.pipeline.auth.helpers import ED_KEY, public_jwk, verify_key


async def test_static_lookup_and_the_single_key_rule() -> None:
    ring = Keyring({"ed": verify_key("ed")})
    assert (await ring.find("ed")) is not None and (await ring.find(None)) is not None
    assert await ring.find("other") is None
    two = Keyring({"ed": verify_key("ed"), "ec": verify_key("ec")})
    assert await two.find(None) is None
    assert two.generation == 0


async def test_static_and_refreshing_sources(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_bytes(orjson.dumps({"keys": [public_jwk(ED_KEY, kid="file-ed")]}))
    cache = KeyCache("file", file_loader(path), ttl_s=60, refetch_s=30)
    ring = Keyring({"rsa": verify_key("rsa")}, [cache])
    await ring.start()
    try:
        assert (await ring.find("rsa")) is not None
        assert (await ring.find("file-ed")) is not None
        assert await ring.find(None) is None  # two keys in all
        assert ring.generation == 1
        alone = Keyring(caches=[cache])
        assert (await alone.find(None)) is not None
    finally:
        await ring.close()
