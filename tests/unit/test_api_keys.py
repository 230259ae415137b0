"""API key format, the key cache and the rate limiter, without a database or Redis."""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

import pytest

from payment_service.auth import keys
from payment_service.auth.caller import DEFAULT_CALLER, Caller, current_actor, current_caller
from payment_service.auth.store import KeyStore
from payment_service.ratelimit import RATE_LIMIT_BACKEND_ERRORS, RateLimitedError, RateLimiter
from payment_service.settings import Settings


def _settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_generated_keys_are_random_parseable_and_have_256_bits() -> None:
    """Keys look like psk_<8 hex>_<43 url-safe chars> (256 bits) and never repeat."""
    made = {keys.generate_key() for _ in range(200)}
    assert len(made) == 200
    for key in made:
        match = keys.KEY_PATTERN.match(key)
        assert match and len(match.group(2)) == 43
        parsed = keys.parse_key(key)
        assert parsed.prefix == match.group(1)
        assert parsed.digest == keys.hash_key(key) and len(parsed.digest) == 64


@pytest.mark.parametrize(
    "value",
    ["", "psk_", "psk_abc_" + "x" * 43, "psk_ABCDEF12_" + "x" * 43, "psk_abcdef12_short", "Bearer"],
)
def test_malformed_keys_are_refused(value: str) -> None:
    """Anything but the key format (short secrets, upper-case prefix, ...) does not parse."""
    with pytest.raises(keys.InvalidApiKeyError):
        keys.parse_key(value)


def test_digests_compare_exactly_and_masks_show_only_the_prefix() -> None:
    """Comparison is by the full hash; a mask carries the public prefix and nothing else."""
    key = keys.generate_key()
    digest = keys.hash_key(key)
    assert keys.digests_match(digest, keys.hash_key(key))
    assert not keys.digests_match(digest, keys.hash_key(key + "x"))
    prefix = keys.parse_key(key).prefix
    assert keys.mask(prefix) == f"psk_{prefix}_…"
    assert key.split("_", 2)[2] not in keys.mask(prefix)


def test_no_caller_outside_a_request() -> None:
    """current_caller() is None and no actor is recorded outside an authorised request."""
    assert current_caller() is None and current_actor() is None
    assert DEFAULT_CALLER.client_id == "default" and DEFAULT_CALLER.scopes == {
        "read",
        "charge",
        "refund",
    }


class CountingStore(KeyStore):
    """A KeyStore whose database lookup is a counter (and a dict of known keys)."""

    def __init__(self, known: dict[str, Caller], **kwargs: Any) -> None:
        super().__init__(session_factory=None, **kwargs)  # type: ignore[arg-type]
        self.known = known
        self.lookups = 0

    async def _lookup(self, key: str) -> Caller | None:
        self.lookups += 1
        await asyncio.sleep(0.01)
        return self.known.get(key)


CALLER = Caller("1", "trip-service", frozenset({"read"}), None, "abcdef12")


async def test_cache_serves_hits_and_misses_until_the_ttl() -> None:
    """Within the TTL a key (known or not) is looked up once; after it, again."""
    store = CountingStore({"good": CALLER}, ttl_seconds=0.2)
    assert await store.caller_for("good") == CALLER
    assert await store.caller_for("good") == CALLER
    assert await store.caller_for("bad") is None
    assert await store.caller_for("bad") is None
    assert store.lookups == 2
    store.known.clear()  # revoked
    await asyncio.sleep(0.25)
    assert await store.caller_for("good") is None
    assert store.lookups == 3


async def test_a_burst_on_a_cold_cache_is_one_lookup() -> None:
    """Fifty concurrent requests with one uncached key cause one database lookup."""
    store = CountingStore({"good": CALLER}, ttl_seconds=5)
    found = await asyncio.gather(*(store.caller_for("good") for _ in range(50)))
    assert set(found) == {CALLER} and store.lookups == 1


async def test_cache_is_bounded() -> None:
    """Made-up keys cannot grow the cache past its bound; the oldest entries go first."""
    store = CountingStore({}, ttl_seconds=60, max_entries=10)
    for i in range(25):
        await store.caller_for(f"made-up-{i}")
    assert len(store._entries) == 10


async def test_limiter_counts_per_scope_and_identity_with_overrides() -> None:
    """Budgets are per (scope, identity); a key's own limit replaces the default."""
    limiter = RateLimiter(_settings(rate_limit_read_per_minute=2, rate_limit_charge_per_minute=1))
    first = await limiter.check("read", "client:1")
    assert first is not None and (first.limit, first.remaining) == (2, 1)
    await limiter.check("read", "client:1")
    with pytest.raises(RateLimitedError) as raised:
        await limiter.check("read", "client:1")
    assert raised.value.status == 429
    assert set(raised.value.headers) == {
        "Retry-After",
        "RateLimit-Limit",
        "RateLimit-Remaining",
        "RateLimit-Reset",
    }
    assert await limiter.check("read", "client:2") is not None
    assert await limiter.check("charge", "client:1") is not None
    overridden = await limiter.check("read", "client:3", override=5)
    assert overridden is not None and overridden.limit == 5


async def test_disabled_limiter_limits_nothing() -> None:
    """RATE_LIMIT_ENABLED=false: every check passes and reports no quota."""
    limiter = RateLimiter(_settings(rate_limit_enabled=False, rate_limit_read_per_minute=1))
    assert [await limiter.check("read", "x") for _ in range(5)] == [None] * 5


class BrokenLimiter:
    async def hit(self, *args: Any, **kwargs: Any) -> bool:
        raise ConnectionError("redis is down")


async def test_storage_failure_fails_open_logs_once_and_backs_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A failing storage lets requests through, logs one warning, counts each request,
    and is not asked again for a second (one timeout per second, not per request)."""
    limiter = RateLimiter(_settings(rate_limit_read_per_minute=1))
    broken = BrokenLimiter()
    calls = 0

    async def hit(*args: Any, **kwargs: Any) -> bool:
        nonlocal calls
        calls += 1
        return await broken.hit()

    limiter.limiter.hit = hit  # type: ignore[union-attr,method-assign]
    before = RATE_LIMIT_BACKEND_ERRORS._value.get()
    with caplog.at_level(logging.WARNING, logger="payment_service.ratelimit"):
        results = [await limiter.check("read", "x") for _ in range(4)]
    assert results == [None] * 4
    assert calls == 1
    assert RATE_LIMIT_BACKEND_ERRORS._value.get() - before == 4
    assert len([r for r in caplog.records if "unavailable" in r.message]) == 1
    limiter._skip_until = -math.inf
    await limiter.check("read", "x")
    assert calls == 2
