"""Revoked token ids (`jti`): a deny-list file, and optionally a Redis set.

The file is one jti per line (blank lines and `#` comments ignored). A background task
re-reads it when its mtime, size or inode changes, so a lookup is a set membership test
and the hot path never touches the disk; if the file vanishes, the last list stays.
Redis, when given, is asked with a short timeout. If it fails, the outage is logged once
and, by default (`auth.revocation_on_error: fail_closed`), a token with a jti gets 503: a
client that can slow the store down by loading the gateway must not get a revoked token
in. With `fail_open` the file's answer stands instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from gateway.errors import Unavailable

log = logging.getLogger("gateway.auth")

Stamp = tuple[int, int, int]  # mtime_ns, size, inode


class SetStore(Protocol):
    """The one call used from a redis.asyncio client."""

    def sismember(self, name: str, value: str) -> Any: ...


def _read_if_changed(path: Path, seen: Stamp | None) -> tuple[Stamp | None, frozenset[str] | None]:
    """(stamp, jtis) when the file changed since `seen`, (stamp, None) when it did not."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None, None
    stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
    if stamp == seen:
        return stamp, None
    text = path.read_text(encoding="utf-8", errors="replace")
    return stamp, frozenset(s for line in text.splitlines()
                            if (s := line.strip()) and not s.startswith("#"))


class DenyList:
    """A jti deny-list file, watched; `jti in denylist` is all the hot path does."""

    def __init__(self, path: Path, poll_s: float = 1.0) -> None:
        self.path = path
        self._poll_s = poll_s
        self._jtis: frozenset[str] = frozenset()
        self._stamp: Stamp | None = None
        self._task: asyncio.Task[None] | None = None

    def __contains__(self, jti: str) -> bool:
        return jti in self._jtis

    def __len__(self) -> int:
        return len(self._jtis)

    async def start(self) -> None:
        await self.reload_if_changed()
        if self._stamp is None:
            log.warning("revocation file %s does not exist yet; no jti is revoked", self.path)
        self._task = asyncio.create_task(self._watch(), name="revocation-watch")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def reload_if_changed(self) -> bool:
        try:
            stamp, jtis = await asyncio.to_thread(_read_if_changed, self.path, self._stamp)
        except OSError as exc:  # unreadable for now: the last list read stays in force
            log.warning("revocation file %s unreadable (%s)", self.path, type(exc).__name__)
            return False
        if stamp is None and self._stamp is not None:
            # Fail closed: a vanished list is more likely a mistake than an amnesty.
            log.warning("revocation file %s disappeared; keeping the last %d jtis",
                        self.path, len(self._jtis))
        self._stamp = stamp
        if jtis is None:
            return False
        self._jtis = jtis
        log.info("revocation file %s loaded: %d jtis", self.path, len(jtis))
        return True

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._poll_s)
            await self.reload_if_changed()


RETRY_S = 1.0  # while Redis fails, how often a request tries it again


class Revocation:
    def __init__(self, denylist: DenyList | None = None, redis: SetStore | None = None, *,
                 redis_key: str = "gateway:revoked_jti", redis_timeout_s: float = 1.0,
                 fail_closed: bool = True,
                 on_error: Callable[[], None] | None = None) -> None:
        self.denylist = denylist
        self._on_error = on_error  # each failed call to Redis (a metric)
        self._fail_closed = fail_closed
        self._redis = redis
        self._redis_key = redis_key
        self._redis_timeout_s = redis_timeout_s
        self._redis_failing = False
        self._retry_at = 0.0  # while failing, Redis is asked again from then on

    async def start(self) -> None:
        if self.denylist is not None:
            await self.denylist.start()

    async def close(self) -> None:
        if self.denylist is not None:
            await self.denylist.close()

    async def is_revoked(self, jti: str | None) -> bool:
        if jti is None:
            return False
        if self.denylist is not None and jti in self.denylist:
            return True
        if self._redis is None:
            return False
        loop = asyncio.get_running_loop()
        if self._redis_failing and loop.time() < self._retry_at:
            return self._unanswered()  # one try per second while down, not one per request
        try:
            async with asyncio.timeout(self._redis_timeout_s):
                found = await self._redis.sismember(self._redis_key, jti)
        except Exception as exc:  # whatever Redis raises (connection, timeout, protocol)
            if not self._redis_failing:
                log.warning("revocation check in Redis failed (%s); %s until it answers again",
                            type(exc).__name__, "refusing tokens with a jti (503)"
                            if self._fail_closed else "using the file list only")
            self._redis_failing = True
            self._retry_at = loop.time() + RETRY_S
            if self._on_error is not None:
                self._on_error()
            return self._unanswered()
        if self._redis_failing:
            log.info("revocation check in Redis answers again")
            self._redis_failing = False
        return bool(found)

    def _unanswered(self) -> bool:
        if self._fail_closed:
            raise Unavailable("Token revocation cannot be checked right now; try again in 1s",
                              headers={"Retry-After": "1"})
        return False
