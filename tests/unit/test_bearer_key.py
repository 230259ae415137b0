"""auth.guard.bearer_key reads Authorization exactly as FastAPI's HTTPBearer(auto_error=False)."""

from __future__ import annotations

import pytest
from fastapi.security import HTTPBearer
from starlette.requests import Request

from payment_service.auth.guard import bearer_key

HEADERS: list[list[tuple[bytes, bytes]]] = [
    [],
    [(b"authorization", b"Bearer psk_ab12cd34_secret")],
    [(b"authorization", b"bearer psk_ab12cd34_secret")],
    [(b"authorization", b"BEARER   spaced out  ")],
    [(b"authorization", b"Basic dXNlcjpwYXNz")],
    [(b"authorization", b"Bearer")],
    [(b"authorization", b"Bearer ")],
    [(b"authorization", b"")],
    [(b"authorization", b" Bearer x")],
    [(b"authorization", b"Bearer first"), (b"authorization", b"Bearer second")],
    [(b"x-other", b"1"), (b"authorization", b"Bearer caf\xe9")],
]


@pytest.mark.parametrize("headers", HEADERS)
async def test_bearer_key_matches_http_bearer(headers: list[tuple[bytes, bytes]]) -> None:
    request = Request({"type": "http", "headers": headers, "method": "GET", "path": "/"})
    credentials = await HTTPBearer(auto_error=False)(request)
    expected = credentials.credentials if credentials is not None else None
    assert bearer_key(request) == expected
