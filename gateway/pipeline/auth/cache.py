"""TokenCache: verified tokens, so a client's every request costs one signature check.

Keyed by the token's SHA-256 (a bounded key size, and no bearer tokens held in memory),
least recently used entries evicted beyond `max_entries`, each entry dropped once its
token's exp has passed. Only the signature and claims verdict is cached: revocation is
checked on every request, hit or miss.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable

from gateway.context import Principal


class TokenCache:
    def __init__(self, max_entries: int = 10_000, clock: Callable[[], float] = time.time) -> None:
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[bytes, Principal] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token: str) -> Principal | None:
        digest = hashlib.sha256(token.encode()).digest()
        principal = self._entries.get(digest)
        if principal is None:
            return None
        if principal.expires_at <= self._clock():
            # Past exp: verify afresh, so the verdict (expired, or within leeway) is exact.
            del self._entries[digest]
            return None
        self._entries.move_to_end(digest)
        return principal

    def put(self, token: str, principal: Principal) -> None:
        if self._max <= 0 or principal.expires_at <= self._clock():
            return
        digest = hashlib.sha256(token.encode()).digest()
        self._entries[digest] = principal
        self._entries.move_to_end(digest)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()
