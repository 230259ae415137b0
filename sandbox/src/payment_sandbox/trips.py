"""Sandbox Trip service: the trips the Payment Service charges for, served over real HTTP.

    GET /v1/trips/{trip_id}   200 trip JSON, or 404 {"detail": "trip not found"}
    PUT /v1/trips/{trip_id}   add (201) or replace (200) a trip at runtime
    GET /_sandbox/stats       GET requests received, last X-Request-ID (?trip_id= for one trip)
    DELETE /_sandbox/stats    zero those counters
    GET/PUT /_sandbox/faults  see `payment_sandbox.faults`
    GET /health               {"status": "UP"}

Trips come from a CSV file (header `trip_id,rider_id,driver_id,status,distance_km,
base_fare,surge_multiplier,total_fare`, empty cell = null), from `PUT`, or are
synthesised for load tests (`synthetic_trip`). Amounts are `Decimal` end to end
and written as JSON numbers with their exact digits.
"""

import csv
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from payment_sandbox._json import DecimalJSONResponse, json_body, json_body_openapi
from payment_sandbox.faults import FaultSwitch, create_fault_router, fault_response

TRIP_COLUMNS = (
    "trip_id",
    "rider_id",
    "driver_id",
    "status",
    "distance_km",
    "base_fare",
    "surge_multiplier",
    "total_fare",
)
# Optional columns (issue 12): served when set, read from a trips CSV when present.
OPTIONAL_COLUMNS = ("cancellation_fee", "pickup_zone", "drop_zone", "started_at", "ended_at")
SYNTHETIC_TRIPS_FROM = 1_000_000
SYNTHETIC_BASE_FARE = Decimal("5.00")
SYNTHETIC_RATE_PER_KM = Decimal("2.50")
SYNTHETIC_SURGES = (Decimal("1.0"), Decimal("1.2"), Decimal("1.5"), Decimal("2.0"))
_CENT = Decimal("0.01")
SYNTHETIC_EPOCH = datetime(2026, 11, 1, tzinfo=UTC)


class TripFields(BaseModel):
    """Everything a trip carries except its id, shared by the stored trip and the PUT body."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rider_id: int | None = None
    driver_id: int | None = None
    status: str = Field(min_length=1, max_length=32, description="COMPLETED, ONGOING, ...")
    distance_km: Decimal | None = Field(None, ge=0)
    base_fare: Decimal | None = Field(None, ge=0)
    surge_multiplier: Decimal | None = Field(None, ge=0)
    total_fare: Decimal | None = Field(None, ge=0)
    cancellation_fee: Decimal | None = Field(
        None, ge=0, description="Charged when a CANCELLED trip has one > 0"
    )
    pickup_zone: str | None = Field(None, max_length=64)
    drop_zone: str | None = Field(None, max_length=64)
    started_at: str | None = Field(None, max_length=40, description="ISO 8601 UTC")
    ended_at: str | None = Field(None, max_length=40, description="ISO 8601 UTC")


class Trip(TripFields):
    """One trip as the Trip service answers it."""

    trip_id: int = Field(gt=0)

    def to_json(self) -> dict[str, Any]:
        """The wire form, in the Trip service's field order, Decimals kept for exact rendering."""
        body = {column: getattr(self, column) for column in TRIP_COLUMNS}
        body.update({c: getattr(self, c) for c in OPTIONAL_COLUMNS if getattr(self, c) is not None})
        return body


class TripPut(TripFields):
    """Body of `PUT /v1/trips/{trip_id}`; `trip_id` may be omitted but must match the path."""

    trip_id: int | None = None


class TripFileError(ValueError):
    """A trips CSV that cannot be served; the message names the file and line."""


def synthetic_trip(trip_id: int) -> Trip:
    """A COMPLETED load-test trip derived from its id alone, so every run sees the same data.

    For `trip_id` >= 1_000_000 (and not in the file):
        rider_id         = 1 + trip_id % 500
        driver_id        = 1 + (trip_id // 500) % 200
        distance_km      = (10 + trip_id % 391) / 10          -> 1.0 .. 40.0
        base_fare        = 5.00
        surge_multiplier = (1.0, 1.2, 1.5, 2.0)[trip_id % 4]
        total_fare       = (5.00 + distance_km * 2.50) * surge_multiplier, half-up to cents
    i.e. the Payment Service's own fallback formula, so both fare paths agree; and
        pickup_zone      = Z<trip_id % 40>,  drop_zone = Z<(trip_id // 40) % 40>
        started_at       = 2026-11-01T00:00Z + (trip_id % 43200) minutes
        ended_at         = started_at + 3 minutes per km
    """
    distance = Decimal(10 + trip_id % 391) / 10
    surge = SYNTHETIC_SURGES[trip_id % len(SYNTHETIC_SURGES)]
    fare = (SYNTHETIC_BASE_FARE + distance * SYNTHETIC_RATE_PER_KM) * surge
    started = SYNTHETIC_EPOCH + timedelta(minutes=trip_id % 43200)
    return Trip(
        trip_id=trip_id,
        rider_id=1 + trip_id % 500,
        driver_id=1 + (trip_id // 500) % 200,
        status="COMPLETED",
        distance_km=distance,
        base_fare=SYNTHETIC_BASE_FARE,
        surge_multiplier=surge,
        total_fare=fare.quantize(_CENT, rounding=ROUND_HALF_UP),
        pickup_zone=f"Z{trip_id % 40:02d}",
        drop_zone=f"Z{(trip_id // 40) % 40:02d}",
        started_at=_iso(started),
        ended_at=_iso(started + timedelta(minutes=int(distance * 3))),
    )


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def load_trips_csv(path: Path) -> list[Trip]:
    """Read a trips CSV, failing on the first bad row with its line number (never half a file)."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            missing = set(TRIP_COLUMNS) - set(reader.fieldnames or ())
            if missing:
                raise TripFileError(f"{path}: header lacks {', '.join(sorted(missing))}")
            trips: list[Trip] = []
            seen: set[int] = set()
            for row in reader:
                line = reader.line_num
                present = TRIP_COLUMNS + tuple(c for c in OPTIONAL_COLUMNS if c in row)
                cells = {column: (row[column] or "").strip() or None for column in present}
                try:
                    trip = Trip.model_validate(cells)
                except ValidationError as exc:
                    first = exc.errors()[0]
                    field = ".".join(str(part) for part in first["loc"])
                    raise TripFileError(f"{path}:{line}: {field}: {first['msg']}") from exc
                if trip.trip_id in seen:
                    raise TripFileError(f"{path}:{line}: duplicate trip_id {trip.trip_id}")
                seen.add(trip.trip_id)
                trips.append(trip)
    except OSError as exc:
        raise TripFileError(f"cannot read trips file {path}: {exc.strerror or exc}") from exc
    return trips


class TripStore:
    """The trips the sandbox serves plus what tests need to see about the requests for them."""

    def __init__(self, trips: Iterable[Trip] = (), *, source: Path | None = None) -> None:
        self.source = source
        self._loaded: dict[int, Trip] = {trip.trip_id: trip for trip in trips}
        self._runtime: dict[int, Trip] = {}
        self.get_requests = 0
        self.last_request_id: str | None = None
        self._gets_by_trip: Counter[int] = Counter()

    @classmethod
    def from_csv(cls, path: Path) -> "TripStore":
        """A store serving the trips of one CSV file."""
        return cls(load_trips_csv(path), source=path)

    def __len__(self) -> int:
        """Trips held (loaded and added at runtime), not counting synthesised ones."""
        return len(self._loaded.keys() | self._runtime.keys())

    def get(self, trip_id: int) -> Trip | None:
        """Runtime trips win over the file; unknown ids from 1_000_000 up are synthesised."""
        trip = self._runtime.get(trip_id) or self._loaded.get(trip_id)
        if trip is None and trip_id >= SYNTHETIC_TRIPS_FROM:
            return synthetic_trip(trip_id)
        return trip

    def put(self, trip: Trip) -> bool:
        """Add or replace a trip until the next `reset`; True when it did not exist before."""
        created = self.get(trip.trip_id) is None
        self._runtime[trip.trip_id] = trip
        return created

    def record_get(self, trip_id: int, request_id: str | None) -> None:
        """Count one lookup so tests can assert retries and request-id forwarding."""
        self.get_requests += 1
        self._gets_by_trip[trip_id] += 1
        self.last_request_id = request_id

    def get_requests_for(self, trip_id: int) -> int:
        """How many lookups arrived for one trip since the last reset."""
        return self._gets_by_trip[trip_id]

    def reset_stats(self) -> None:
        """Zero the request counters."""
        self.get_requests = 0
        self.last_request_id = None
        self._gets_by_trip.clear()

    def reset(self) -> None:
        """Back to the file's trips with zero counters (between tests)."""
        self._runtime.clear()
        self.reset_stats()

    def stats(self, trip_id: int | None = None) -> dict[str, Any]:
        """Counters as JSON; per-trip only on request, since load tests touch many ids."""
        answer: dict[str, Any] = {
            "get_requests": self.get_requests,
            "last_request_id": self.last_request_id,
            "trips": len(self),
        }
        if trip_id is not None:
            answer["trip_id"] = trip_id
            answer["trip_get_requests"] = self.get_requests_for(trip_id)
        return answer


def create_trip_app(trips: TripStore, faults: FaultSwitch) -> FastAPI:
    """The Trip service stand-in: lookups obey the fault switch, setup endpoints never do."""
    app = FastAPI(
        title="Sandbox Trip service",
        summary="Stand-in for the Trip service in development and tests.",
        version="1.0.0",
    )
    app.include_router(create_fault_router(faults, "trip"))

    @app.get("/v1/trips/{trip_id}", response_model=None, tags=["trips"])
    async def get_trip(trip_id: int, request: Request) -> DecimalJSONResponse | JSONResponse:
        """Answer one trip, or 404, after playing the current fault."""
        trips.record_get(trip_id, request.headers.get("x-request-id"))
        status = await faults.gate()
        if status is not None:
            return fault_response(status, "trip", faults.mode)
        trip = trips.get(trip_id)
        if trip is None:
            return JSONResponse(
                status_code=HTTPStatus.NOT_FOUND, content={"detail": "trip not found"}
            )
        return DecimalJSONResponse(trip.to_json())

    @app.put(
        "/v1/trips/{trip_id}",
        response_model=None,
        tags=["trips"],
        openapi_extra=json_body_openapi(TripPut),
    )
    async def put_trip(
        trip_id: Annotated[int, PathParam(gt=0)],
        body: Annotated[TripPut, Depends(json_body(TripPut))],
    ) -> DecimalJSONResponse | JSONResponse:
        """Add or replace a trip so a test can charge a fresh COMPLETED or ONGOING one."""
        if body.trip_id is not None and body.trip_id != trip_id:
            return JSONResponse(
                status_code=HTTPStatus.UNPROCESSABLE_ENTITY,
                content={"detail": f"body trip_id {body.trip_id} differs from path {trip_id}"},
            )
        trip = Trip(trip_id=trip_id, **body.model_dump(exclude={"trip_id"}))
        created = trips.put(trip)
        return DecimalJSONResponse(
            trip.to_json(), status_code=HTTPStatus.CREATED if created else HTTPStatus.OK
        )

    @app.get("/_sandbox/stats", tags=["sandbox control"])
    async def get_stats(trip_id: Annotated[int | None, Query()] = None) -> dict[str, Any]:
        """How many lookups arrived and the last X-Request-ID, for retry and tracing tests."""
        return trips.stats(trip_id)

    @app.delete("/_sandbox/stats", tags=["sandbox control"])
    async def delete_stats() -> dict[str, Any]:
        """Zero the lookup counters."""
        trips.reset_stats()
        return trips.stats()

    @app.get("/health", tags=["sandbox control"])
    async def health() -> dict[str, str]:
        """Liveness for scripts waiting on the sandbox."""
        return {"status": "UP"}

    return app
