"""KeyCache: one JWKS document (a URL or a file), cached and refreshed without flooding.

    verify ─► get(kid) ─► known kid ───────────────────────────────► key
                 │  set older than ttl ─► background refresh (never waited for)
                 │  unknown kid ─► join the fetch in flight, or start one (at most
                 │                 one per refetch window), then look again
                 ▼
            refresh() ─► one fetch in flight at a time, shared by every waiter
                           ok: replace the set   failed: keep the last good set, log

A file source (a JWKS file, PEM files: often a mounted Secret) is also watched: when its
files change on disk (mtime, size or inode, looked at most once per `stamp_check_s`) it
is read again at once, so a rotated or withdrawn key takes effect within a second or so
of the kubelet's update, not after the TTL, and not after a throttled miss.

`kid` values are only ever dictionary keys here: never a path, a URL or a query.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from pathlib import Path

import aiohttp
import orjson

from gateway.pipeline.auth.keys import VerifyKey, parse_jwks, pem_jwk

log = logging.getLogger("gateway.auth")

MAX_JWKS_BYTES = 1024 * 1024  # a key set is a few KiB; a bigger answer is not one

Loader = Callable[[], Awaitable[bytes]]
Stamp = Callable[[], Hashable]  # cheap, synchronous: changes when the source's files do


class KeySetUnavailable(RuntimeError):
    """A required key source yielded no usable key at start."""

Clock = Callable[[], float]


class KeyCache:
    """The keys of one JWKS source. `fetches` counts attempts (tests, diagnostics)."""

    def __init__(self, source: str, load: Loader, *, ttl_s: float, refetch_s: float,
                 required: bool = False, clock: Clock = time.monotonic,
                 stamp: Stamp | None = None, stamp_check_s: float = 1.0) -> None:
        self.source = source
        self._stamp = stamp
        self._stamp_check_s = stamp_check_s
        self._loaded_stamp: Hashable = None  # the files' stamp when last read
        self._stamp_checked_at = -math.inf
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
        if self._inflight is not None or self._files_changed():
            await self.refresh()  # a fetch is under way, or due: its answer may hold the kid
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
        stale = (now - self._fetched_at >= self._ttl_s
                 and now - self._attempted_at >= self._refetch_s)
        if stale or self._files_changed():
            self._spawn()

    def _files_changed(self) -> bool:
        """A file source changed on disk since it was read (looked at once per check)."""
        if self._stamp is None:
            return False
        now = self._clock()
        if now - self._stamp_checked_at < self._stamp_check_s:
            return False
        self._stamp_checked_at = now
        return self._stamp() != self._loaded_stamp

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
        if self._stamp is not None:  # before reading: a change meanwhile is read again
            self._loaded_stamp = self._stamp()
            self._stamp_checked_at = self._clock()
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


def pem_loader(paths: Sequence[Path]) -> Loader:
    """PEM public key files as one JWKS document (kids: RFC 7638 thumbprints). A file
    that is gone is a withdrawn key (the kubelet removes a key that left its Secret); one
    that cannot be used fails the whole read, so the last good set keeps serving."""
    def read() -> bytes:
        keys = []
        for path in paths:
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                log.warning("PEM key file %s is gone: its key is withdrawn", path)
                continue
            keys.append(pem_jwk(data, str(path)))
        return orjson.dumps({"keys": keys})

    async def load() -> bytes:
        return await asyncio.to_thread(read)

    return load


def file_stamp(paths: Sequence[Path]) -> Stamp:
    """What changes when any of `paths` is rewritten, replaced or removed: a mounted
    Secret's update swaps a symlink, hence a new inode."""
    def stamp() -> tuple[tuple[int, int, int] | None, ...]:
        stamps: list[tuple[int, int, int] | None] = []
        for path in paths:
            try:
                st = os.stat(path)
            except OSError:
                stamps.append(None)
            else:
                stamps.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(stamps)

    return stamp
