"""KeyCache: one JWKS document (a URL or a file), cached and refreshed without flooding.

    verify ─► get(kid) ─► known kid ───────────────────────────────► key
                 │  set older than ttl ─► background refresh (never waited for)
                 │  unknown kid ─► join the fetch in flight, or start one (at most
                 │                 one per refetch window), then look again
                 ▼
            refresh() ─► one fetch in flight at a time, shared by every waiter
                           ok: replace the set   failed: keep the last good set, log

`kid` values are only ever dictionary keys here: never a path, a URL or a query.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import aiohttp

from gateway.pipeline.auth.keys import VerifyKey, parse_jwks

log = logging.getLogger("gateway.auth")

MAX_JWKS_BYTES = 1024 * 1024  # a key set is a few KiB; a bigger answer is not one

Loader = Callable[[], Awaitable[bytes]]


class KeySetUnavailable(RuntimeError):
    """A required key source yielded no usable key at start."""

Clock = Callable[[], float]


class KeyCache:
    """The keys of one JWKS source. `fetches` counts attempts (tests, diagnostics)."""

    def __init__(self, source: str, load: Loader, *, ttl_s: float, refetch_s: float,
                 required: bool = False, clock: Clock = time.monotonic) -> None:
        self.source = source
        self._required = required
        self._load = load
        self._ttl_s = ttl_s
        self._refetch_s = refetch_s
        self._clock = clock
        self._keys: dict[str, VerifyKey] = {}
        self._fingerprint: frozenset[tuple[str, str, str]] = frozenset()
        self._fetched_at = -math.inf  # last success
        self._attempted_at = -math.inf  # last attempt, successful or not
        self._missed_at = -math.inf  # last fetch caused by a kid we did not have
        self._inflight: asyncio.Task[None] | None = None
        self.fetches = 0
        self.generation = 0  # bumped when the set of keys changes, not on every fetch

    @property
    def keys(self) -> Mapping[str, VerifyKey]:
        return self._keys

    async def start(self) -> None:
        """First fetch. A provider down at start is logged, not fatal (keys come later);
        a required source (a file: nothing will fix it by itself) raises KeySetUnavailable."""
        await self.refresh()
        if self._required and not self._keys:
            raise KeySetUnavailable(f"no usable signing key in {self.source}")

    async def close(self) -> None:
        task, self._inflight = self._inflight, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def get(self, kid: str | None) -> VerifyKey | None:
        """The key for kid (None: the only key, if there is exactly one)."""
        key = self._find(kid)
        if key is not None:
            self.poke()
            return key
        if self._inflight is not None:
            await self.refresh()  # a fetch is under way: its answer may hold the kid
        elif kid is not None or not self._keys:
            now = self._clock()
            # Rotation: a new kid shows up before our TTL runs out. Throttled, because
            # anyone can send a random kid and each one would otherwise cost a fetch.
            if now - self._missed_at < self._refetch_s:
                return None
            self._missed_at = now
            await self.refresh()
        return self._find(kid)

    def poke(self) -> None:
        """Refresh in the background if the set is older than its TTL; never waits."""
        now = self._clock()
        if now - self._fetched_at >= self._ttl_s and now - self._attempted_at >= self._refetch_s:
            self._spawn()

    async def refresh(self) -> None:
        """Fetch now, or join the fetch already in flight."""
        # shield: a waiter whose request is cancelled must not cancel everyone's fetch.
        await asyncio.shield(self._spawn())

    def _find(self, kid: str | None) -> VerifyKey | None:
        if kid is None:
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    def _spawn(self) -> asyncio.Task[None]:
        if self._inflight is None:
            self._inflight = asyncio.create_task(self._fetch(), name=f"jwks {self.source}")
            self._inflight.add_done_callback(self._landed)
        return self._inflight

    def _landed(self, task: asyncio.Task[None]) -> None:
        if self._inflight is task:
            self._inflight = None

    async def _fetch(self) -> None:
        self._attempted_at = self._clock()
        self.fetches += 1
        try:
            keys = parse_jwks(await self._load(), self.source)
        except Exception as exc:  # any failure at all keeps the last good set serving
            log.warning("key set %s not refreshed (%s: %s); keeping %d known keys",
                        self.source, type(exc).__name__, exc, len(self._keys))
            return
        fingerprint = frozenset((k.kid, k.alg, k.thumb) for k in keys.values())
        if fingerprint != self._fingerprint:
            self._fingerprint = fingerprint
            self.generation += 1
            if self._keys:
                log.info("key set %s changed: %d keys", self.source, len(keys))
        self._keys = keys
        self._fetched_at = self._clock()


def url_loader(session: aiohttp.ClientSession, url: str, timeout_s: float) -> Loader:
    async def load() -> bytes:
        # identity: the app's session does not decompress (it relays upstream bytes as is).
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s),
                               headers={"Accept": "application/json",
                                        "Accept-Encoding": "identity"},
                               allow_redirects=False) as resp:
            if resp.status != 200:
                raise ValueError(f"HTTP {resp.status}")
            body = bytearray()
            async for chunk in resp.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise ValueError("key set larger than 1 MiB")
            return bytes(body)

    return load


def file_loader(path: Path) -> Loader:
    def read() -> bytes:
        with path.open("rb") as f:
            raw = f.read(MAX_JWKS_BYTES + 1)
        if len(raw) > MAX_JWKS_BYTES:
            raise ValueError("key set larger than 1 MiB")
        return raw

    async def load() -> bytes:
        return await asyncio.to_thread(read)

    return load
