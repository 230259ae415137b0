"""The shared shape of our HTTP peers' clients: one httpx transport per app, explicit limits.

Unless a test passes a transport of its own, requests go through aiohttp
(`httpx-aiohttp`: the same httpx API and exceptions). A request through it costs about
a quarter of httpcore's CPU (measured: a notification POST 2.0 -> 0.5 ms, a Trip GET
about 1.0 -> 0.5 ms). httpx's tracing instrumentation patches httpcore's transport class
only, so a transport on aiohttp is wrapped on its own when a tracer provider is given.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
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
    """Async context manager owning the httpx transport to one peer service.

    Created in the lifespan (never at import time); tests pass a `transport` to
    talk to an in-process app, or point the base URL at a real server on loopback.

    Requests go straight to the transport as `httpx.Request`s (`request`): what
    `httpx.AsyncClient.send` adds on top (auth and redirect handling, a cookie jar,
    URL merging, event hooks) serves no purpose towards our peers and cost 240 µs of
    CPU per call, more than the aiohttp transport itself (measured: a Trip GET 0.63 ->
    0.39 ms). With a tracer provider the transport is wrapped in OpenTelemetry's
    httpx transport, which makes the client span and injects `traceparent`.
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
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self._verify = verify
        self._limits = httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max(1, max_connections // 5),
        )
        self._given_transport = transport
        self._tracer_provider = tracer_provider
        # A string: httpx parses a URL string in half the time of URL.copy_with.
        self._base_url = str(httpx.URL(base_url)).rstrip("/")
        self._extensions = {
            "timeout": httpx.Timeout(timeout, connect=min(timeout, connect_timeout)).as_dict()
        }
        self._headers = {"Accept": "application/json", "User-Agent": "payment-service"}
        self._transport: httpx.AsyncBaseTransport | None = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
    ) -> httpx.Response:
        """`method path` (relative to the base URL), its body read; raises httpx's errors."""
        return await self.fetch(method, self._base_url + path, headers=headers, content=content)

    async def fetch(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
    ) -> httpx.Response:
        """`method url` (absolute), its body read; raises httpx's errors."""
        if self._transport is None:
            raise RuntimeError(f"{type(self).__name__} used before `open` (or `async with`)")
        request = httpx.Request(
            method,
            url,
            headers={**self._headers, **headers} if headers else self._headers,
            content=content,
            extensions=self._extensions,
        )
        response = await self._transport.handle_async_request(request)
        try:
            await response.aread()
        finally:
            await response.aclose()
        return response

    def open(self) -> None:
        """Make the transport (no I/O: aiohttp opens its session on the first request)."""
        if self._given_transport is not None:
            self._transport = self._given_transport
            return
        # A new one each time: closing it closes its aiohttp session for good.
        transport: httpx.AsyncBaseTransport = AiohttpTransport(
            limits=self._limits, verify=self._verify
        )
        if self._tracer_provider is not None:
            from opentelemetry.instrumentation.httpx import AsyncOpenTelemetryTransport

            transport = AsyncOpenTelemetryTransport(
                transport, tracer_provider=self._tracer_provider
            )
        self._transport = transport

    async def aclose(self) -> None:
        """Close the transport this client made (a given one belongs to its giver)."""
        if self._transport is not None:
            if self._given_transport is None:
                await self._transport.aclose()
            self._transport = None

    async def __aenter__(self) -> Self:
        self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
