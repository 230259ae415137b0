"""The Trip client: parsing, retries on connect errors and 5xx, no retry on 404."""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest

from payment_service.clients.trip import TripClient, TripServiceUnavailableError
from payment_service.observability import _request_id
from payment_service.settings import Settings


def settings(retries: int = 2) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        trip_service_url="http://trips.test",
        trip_service_retries=retries,
        trip_service_timeout_seconds=0.5,
    )


def client_with(handler, retries: int = 2) -> TripClient:
    return TripClient(settings(retries), transport=httpx.MockTransport(handler))


async def test_parses_trip_with_exact_decimals_and_aliases() -> None:
    """`id` and `distance` are accepted as aliases; numbers stay Decimal."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            content=b'{"id": 5, "rider_id": 2, "driver_id": 3, '
            b'"status": "completed", "distance": 12.3, "total_fare": 99.01}',
        )

    async with client_with(handler) as trips:
        trip = await trips.get_trip(5)
    assert trip is not None
    assert trip.trip_id == 5 and trip.status == "COMPLETED"
    assert trip.distance_km == Decimal("12.3") and trip.total_fare == Decimal("99.01")


async def test_404_is_none_without_retry() -> None:
    """A 404 means the trip does not exist: no retry, None."""
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(404, json={"detail": "trip not found"})

    async with client_with(handler) as trips:
        assert await trips.get_trip(9) is None
    assert len(calls) == 1


async def test_5xx_is_retried_then_succeeds() -> None:
    """Two 503s then a 200: the bounded retry gets the trip."""
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) < 3:
            return httpx.Response(503)
        return httpx.Response(200, json={"trip_id": 1, "status": "COMPLETED", "total_fare": 5})

    async with client_with(handler, retries=2) as trips:
        assert (await trips.get_trip(1)) is not None
    assert len(calls) == 3


async def test_retries_are_bounded() -> None:
    """Persistent 500s give up after 1 + TRIP_SERVICE_RETRIES attempts."""
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(500)

    async with client_with(handler, retries=1) as trips:
        with pytest.raises(TripServiceUnavailableError):
            await trips.get_trip(1)
    assert len(calls) == 2


async def test_connect_error_becomes_unavailable() -> None:
    """A refused connection is retried, then reported as unavailable (503 + Retry-After)."""
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        raise httpx.ConnectError("refused", request=request)

    async with client_with(handler, retries=2) as trips:
        with pytest.raises(TripServiceUnavailableError) as info:
            await trips.get_trip(1)
    assert len(calls) == 3
    assert info.value.status == 503 and info.value.headers["Retry-After"]


async def test_timeout_is_not_retried() -> None:
    """A read timeout is reported at once (a retry would double the caller's wait)."""
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        raise httpx.ReadTimeout("slow", request=request)

    async with client_with(handler) as trips:
        with pytest.raises(TripServiceUnavailableError):
            await trips.get_trip(1)
    assert len(calls) == 1


async def test_unreadable_answer_is_unavailable() -> None:
    """A 200 that is not a trip is treated as the Trip service failing."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"<html>oops</html>")

    async with client_with(handler) as trips:
        with pytest.raises(TripServiceUnavailableError):
            await trips.get_trip(1)


async def test_request_id_is_forwarded() -> None:
    """The current request id travels to the Trip service as X-Request-ID."""
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("x-request-id"))
        return httpx.Response(200, json={"trip_id": 1, "status": "COMPLETED", "total_fare": 1})

    token = _request_id.set("req-123")
    try:
        async with client_with(handler) as trips:
            await trips.get_trip(1)
    finally:
        _request_id.reset(token)
    assert seen == ["req-123"]
