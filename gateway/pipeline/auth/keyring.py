"""Keyring: every verification key the gateway trusts, found by kid.

The static key (the HS256 secret) is loaded once; the other sources (a JWKS URL, a JWKS
file, PEM files) are KeyCaches that refresh themselves, the files whenever they change.
A token without a kid is accepted only when the whole keyring holds exactly one key, so it
never selects among keys by trial.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from gateway.pipeline.auth.jwks import KeyCache
from gateway.pipeline.auth.keys import VerifyKey


class Keyring:
    def __init__(self, static: Mapping[str, VerifyKey] | None = None,
                 caches: Sequence[KeyCache] = ()) -> None:
        self._static = dict(static or {})
        self._caches = tuple(caches)

    @property
    def generation(self) -> int:
        """Changes whenever any source's set of keys changes (cached verdicts go stale)."""
        return sum(cache.generation for cache in self._caches)

    async def start(self) -> None:
        for cache in self._caches:
            await cache.start()

    async def close(self) -> None:
        for cache in self._caches:
            await cache.close()

    def poke(self) -> None:
        for cache in self._caches:
            cache.poke()

    async def find(self, kid: str | None) -> VerifyKey | None:
        if kid is None:
            return await self._only_key()
        key = self._static.get(kid)
        for cache in self._caches:
            if key is not None:
                break
            key = await cache.get(kid)
        return key

    async def _only_key(self) -> VerifyKey | None:
        if not self._caches:
            return next(iter(self._static.values())) if len(self._static) == 1 else None
        if self._static or len(self._caches) > 1:
            return None
        return await self._caches[0].get(None)
