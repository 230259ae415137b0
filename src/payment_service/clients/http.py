"""The shared shape of our HTTP peers' clients: one httpx client per app, explicit limits.

Unless a test passes a transport of its own, requests go through aiohttp
(`httpx-aiohttp`: the same httpx API and exceptions). A request through it costs about
a quarter of httpcore's CPU (measured: a notification POST 2.0 -> 0.5 ms, a Trip GET
about 1.0 -> 0.5 ms). httpx's tracing instrumentation patches httpcore's transport class
only, so a client on aiohttp is instrumented on its own when a tracer provider is given.
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Self

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider


def original_error(exc: BaseException) -> BaseException:
    """aiohttp's own error behind an httpx one, else the error itself.

    The aiohttp transport reports every failure to connect, a refused connection
    included, as `httpx.ConnectTimeout`; the cause tells a refusal from a real timeout.
    """
    cause = exc.__cause__
    return cause if isinstance(cause, aiohttp.ClientError) else exc


def is_timeout(exc: BaseException) -> bool:
    """The peer did not answer in time (not: refused, reset, unreachable)."""
    original = original_error(exc)
    # aiohttp's ServerTimeoutError / ConnectionTimeoutError are TimeoutErrors.
    return isinstance(original, TimeoutError | httpx.TimeoutException)


def is_refused(exc: BaseException) -> bool:
    """Nothing listens or the connection could not be made: safe to retry a GET."""
    original = original_error(exc)
    if isinstance(original, TimeoutError):
        return False
    return isinstance(original, aiohttp.ClientConnectorError | httpx.ConnectError)


class PeerClient:
    """Async context manager owning one `httpx.AsyncClient` for a peer service.

    Created in the lifespan (never at import time); tests pass a `transport` to
    talk to an in-process app, or point the base URL at a real server on loopback.
    """

    def __init__(
        self,
        *,
        base_url: str,
        timeout: float,
        connect_timeout: float,
        max_connections: int,
        transport: httpx.AsyncBaseTransport | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self._limits = httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max(1, max_connections // 5),
        )
        self._own_transport = transport is None
        self._tracer_provider = tracer_provider
        self._config = {
            "base_url": base_url,
            "timeout": httpx.Timeout(timeout, connect=min(timeout, connect_timeout)),
            "limits": self._limits,
            "transport": transport,
            "headers": {"Accept": "application/json", "User-Agent": "payment-service"},
        }
        self._http: httpx.AsyncClient | None = None

    @property
    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            raise RuntimeError(f"{type(self).__name__} used outside its `async with` block")
        return self._http

    async def __aenter__(self) -> Self:
        if self._own_transport:
            # A new one each time: closing the client closes its aiohttp session for good.
            self._config["transport"] = AiohttpTransport(limits=self._limits)
        self._http = httpx.AsyncClient(**self._config)  # type: ignore[arg-type]
        if self._own_transport and self._tracer_provider is not None:
            from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

            HTTPXClientInstrumentor.instrument_client(
                self._http, tracer_provider=self._tracer_provider
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None
