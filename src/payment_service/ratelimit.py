"""Per-client rate limits (the `limits` library), per scope and minute (SPEC §7a).

Budgets: read 1200, charge 600, refund 120 per client and minute
(`RATE_LIMIT_*_PER_MINUTE`), or the key's own `--rate-limit`. The client is its API
key's client, else its address (which is the proxy's unless FORWARDED_ALLOW_IPS
trusts it). Counters live in memory, or in Redis when REDIS_URL is set, so every
replica draws from one budget.

Limiting happens in the route's auth dependency, inside the Prometheus
instrumentation, so 429s are counted like any other answer. If Redis fails the
request goes through (fail open): a limiter outage must never become an API outage;
it is logged at most every LOG_INTERVAL_SECONDS and counted in
`rate_limit_backend_errors_total`.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from prometheus_client import Counter

from payment_service.errors import PaymentServiceError
from payment_service.settings import Settings

log = logging.getLogger(__name__)

LOG_INTERVAL_SECONDS = 30.0
REDIS_TIMEOUT_SECONDS = 0.25
"""Bound on one Redis call: a hung Redis delays a request by this much, then fails open."""
BACKOFF_SECONDS = 1.0
"""After a storage failure, skip the storage this long: an outage costs one timeout per
second per process, not one per request."""

RATE_LIMIT_BACKEND_ERRORS = Counter(
    "rate_limit_backend_errors",
    "Requests let through unlimited because the rate-limit storage (Redis) failed",
)


class RateLimitedError(PaymentServiceError):
    status = 429
    type = "rate-limited"
    title = "Too Many Requests"


@dataclass(frozen=True, slots=True)
class Quota:
    """What the RateLimit-* headers say after a check."""

    limit: int
    remaining: int
    reset_seconds: int

    def headers(self) -> dict[str, str]:
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_seconds),
        }

    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        """`headers()` as ASGI header pairs (lower-case names), added to allowed responses
        by `edge.ResponseEnvelopeMiddleware`."""
        return [(name.lower().encode(), value.encode()) for name, value in self.headers().items()]


def _storage(settings: Settings) -> Storage:
    if settings.redis_url is None:
        return MemoryStorage()
    url = settings.redis_url.get_secret_value()
    return RedisStorage(
        url if url.startswith("async+") else f"async+{url}",
        implementation="redispy",
        key_prefix=settings.redis_key_prefix,
        socket_timeout=REDIS_TIMEOUT_SECONDS,
        socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
    )


class RateLimiter:
    """Checks one request against its client's budget for a scope."""

    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.rate_limit_enabled
        self.budgets = {
            "read": settings.rate_limit_read_per_minute,
            "charge": settings.rate_limit_charge_per_minute,
            "refund": settings.rate_limit_refund_per_minute,
        }
        self.backend = "redis" if settings.redis_url is not None else "memory"
        self.limiter = MovingWindowRateLimiter(_storage(settings)) if self.enabled else None
        self._last_warning = -math.inf
        self._skip_until = -math.inf

    async def check(self, scope: str, identity: str, override: int | None = None) -> Quota | None:
        """Count a hit; raise RateLimitedError past the budget. None: not limited/unknown."""
        if self.limiter is None:
            return None
        item = RateLimitItemPerMinute(override or self.budgets[scope])
        if time.monotonic() < self._skip_until:
            RATE_LIMIT_BACKEND_ERRORS.inc()
            return None
        try:
            allowed = await self.limiter.hit(item, scope, identity)
            stats = await self.limiter.get_window_stats(item, scope, identity)
        except Exception as exc:  # any storage failure: fail open
            self._backend_failed(exc)
            return None
        reset = max(1, math.ceil(stats.reset_time - time.time()))
        quota = Quota(item.amount, max(0, stats.remaining), reset)
        if not allowed:
            headers = {"Retry-After": str(reset), **quota.headers()}
            raise RateLimitedError(
                f"Rate limit of {item.amount} {scope} requests per minute exceeded; "
                f"retry in {reset} s.",
                headers=headers,
            )
        return quota

    def _backend_failed(self, exc: Exception) -> None:
        RATE_LIMIT_BACKEND_ERRORS.inc()
        now = time.monotonic()
        self._skip_until = now + BACKOFF_SECONDS
        if now - self._last_warning >= LOG_INTERVAL_SECONDS:
            self._last_warning = now
            log.warning(
                "rate-limit storage unavailable; allowing requests unlimited",
                extra={"backend": self.backend, "error": type(exc).__name__},
            )


QUOTA_STATE_KEY = "rate_limit_quota"
