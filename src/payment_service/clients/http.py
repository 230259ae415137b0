"""The shared shape of our HTTP peers' clients: one httpx client per app, explicit limits."""

from __future__ import annotations

from types import TracebackType
from typing import Self

import httpx


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
    ) -> None:
        self._config = {
            "base_url": base_url,
            "timeout": httpx.Timeout(timeout, connect=min(timeout, connect_timeout)),
            "limits": httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max(1, max_connections // 5),
            ),
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
        self._http = httpx.AsyncClient(**self._config)  # type: ignore[arg-type]
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
