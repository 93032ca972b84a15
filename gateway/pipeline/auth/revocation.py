"""Revoked token ids (`jti`): a file that reloads when it changes, and optionally Redis."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("gateway.auth")


class RevocationList:
    def __init__(self, path: Path | None, redis: Any = None, redis_key: str = "gw:revoked",
                 check_every_s: float = 1.0, redis_timeout_s: float = 0.2) -> None:
        self._path = path
        self._redis = redis
        self._redis_key = redis_key
        self._check_every_s = check_every_s
        self._redis_timeout_s = redis_timeout_s
        self._revoked: frozenset[str] = frozenset()
        self._mtime: float | None = None
        self._checked = 0.0

    def _reload_file(self) -> None:
        now = time.monotonic()
        if self._path is None or now - self._checked < self._check_every_s:
            return
        self._checked = now
        try:
            mtime = self._path.stat().st_mtime
            if mtime != self._mtime:
                lines = self._path.read_text().splitlines()
                self._revoked = frozenset(s for line in lines if (s := line.strip())
                                          and not s.startswith("#"))
                self._mtime = mtime
        except OSError:
            pass  # a missing or unreadable list keeps the last one read

    async def is_revoked(self, jti: str | None) -> bool:
        if jti is None:
            return False
        self._reload_file()
        if jti in self._revoked:
            return True
        if self._redis is None:
            return False
        try:
            async with asyncio.timeout(self._redis_timeout_s):
                return bool(await self._redis.sismember(self._redis_key, jti))
        except Exception as exc:
            log.warning("revocation check in Redis failed (%s); using the file list",
                        exc.__class__.__name__)
            return False
