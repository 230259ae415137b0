"""Key lookups cached in process, so authenticating costs no database round trip per request.

Entries (hits and misses) live `API_KEY_CACHE_SECONDS` (default 5 s): a revoked key
stops working within that time on every replica. The cache is keyed by the key's
SHA-256 (no raw key kept in memory) and bounded (least recently used goes first),
so a flood of made-up keys cannot grow it.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict

from payment_service.auth.caller import Caller
from payment_service.auth.keys import hash_key
from payment_service.db import SessionFactory

MAX_ENTRIES = 4096


class KeyStore:
    def __init__(
        self, session_factory: SessionFactory, ttl_seconds: float, max_entries: int = MAX_ENTRIES
    ) -> None:
        self.session_factory = session_factory
        self.ttl = ttl_seconds
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, Caller | None]] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}

    async def caller_for(self, key: str) -> Caller | None:
        """The key's caller, or None when unknown or revoked (cached either way)."""
        digest = hash_key(key)
        cached = self._fresh(digest)
        if cached is not None:
            return cached[1]
        # One lookup per key at a time: a burst on a cold cache is one query, not N.
        lock = self._locks.setdefault(digest, asyncio.Lock())
        try:
            async with lock:
                cached = self._fresh(digest)
                if cached is not None:
                    return cached[1]
                caller = await self._lookup(key)
                self._store(digest, caller)
                return caller
        finally:
            self._locks.pop(digest, None)

    async def _lookup(self, key: str) -> Caller | None:
        from payment_service.services.api_keys import caller_for_key

        async with self.session_factory() as session, session.begin():
            return await caller_for_key(session, key)

    def _fresh(self, digest: str) -> tuple[float, Caller | None] | None:
        entry = self._entries.get(digest)
        if entry is None:
            return None
        if entry[0] <= time.monotonic():
            del self._entries[digest]
            return None
        self._entries.move_to_end(digest)
        return entry

    def _store(self, digest: str, caller: Caller | None) -> None:
        if self.ttl <= 0:
            return
        self._entries[digest] = (time.monotonic() + self.ttl, caller)
        self._entries.move_to_end(digest)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()
