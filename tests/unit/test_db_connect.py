"""How the engine connects: TLS from the URL, off on local sockets; a pre-ping without SQL."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from sqlalchemy import exc
from sqlalchemy.engine import make_url

from payment_service.db import _check_alive, ssl_connect_args


@pytest.mark.parametrize(
    ("url", "expected_ssl"),
    [
        ("postgresql://postgres@127.0.0.1:5432/postgres", False),
        ("postgresql://postgres@localhost/postgres", False),
        ("postgresql://postgres@[::1]/postgres", False),
        ("postgresql:///payments?host=/tmp/pg", False),
        ("postgresql://u@127.0.0.1/x?sslmode=require", "require"),
        ("postgresql://u@db.internal/x?sslmode=verify-full", "verify-full"),
        ("postgresql://u@db.internal/x?sslmode=disable", "disable"),
    ],
)
def test_ssl_follows_the_url_and_is_off_on_local_sockets(url: str, expected_ssl: object) -> None:
    stripped, args = ssl_connect_args(make_url(url))
    assert args == {"ssl": expected_ssl}
    assert "sslmode" not in stripped.query  # asyncpg takes no sslmode keyword


@pytest.mark.parametrize(
    "url", ["postgresql://u@db.internal/x", "postgresql://u@127.0.0.1/x?ssl=require"]
)
def test_remote_or_explicit_ssl_keeps_asyncpgs_own_handling(url: str) -> None:
    parsed = make_url(url)
    assert ssl_connect_args(parsed) == (parsed, {})


def test_pre_ping_refuses_a_connection_the_server_closed_without_a_round_trip() -> None:
    def fairy(closed: bool) -> SimpleNamespace:
        return SimpleNamespace(_connection=SimpleNamespace(is_closed=lambda: closed))

    _check_alive(fairy(False), None, None)
    with pytest.raises(exc.DisconnectionError):
        _check_alive(fairy(True), None, None)
