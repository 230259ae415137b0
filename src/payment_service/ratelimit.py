"""Per-client rate limiting (the `limits` library), off with RATE_LIMIT_ENABLED=false."""

from __future__ import annotations

from limits import parse
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter
from starlette.types import ASGIApp, Receive, Scope, Send

from payment_service.errors import problem_response

EXEMPT_PREFIXES = ("/health", "/metrics", "/docs", "/redoc", "/openapi.json", "/static")


class RateLimitMiddleware:
    """Answers 429 problem+json with Retry-After once a client exceeds its budget."""

    def __init__(self, app: ASGIApp, per_minute: int) -> None:
        self.app = app
        self.limit = parse(f"{per_minute}/minute")
        self.limiter = MovingWindowRateLimiter(MemoryStorage())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(EXEMPT_PREFIXES):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        identity = client[0] if client else "unknown"
        if await self.limiter.hit(self.limit, identity):
            await self.app(scope, receive, send)
            return
        response = problem_response(
            429,
            "Too Many Requests",
            f"Rate limit of {self.limit} exceeded; retry later.",
            type_="rate-limited",
            headers={"Retry-After": "60"},
        )
        await response(scope, receive, send)
