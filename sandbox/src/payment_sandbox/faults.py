"""Fault injection for the sandbox Trip and Notification services.

Each peer owns a `FaultSwitch`; it is set at start (CLI flags / `SandboxConfig`),
from Python (`Sandbox.set_fault`) or over HTTP. Modes:

    normal  answer normally
    slow    wait `delay_seconds`, then answer normally
    fail    answer `status_code` (default 500) with an application/problem+json body
    flaky   answer `status_code` to the next `count` requests (default 1), then go
            back to normal by itself -- for testing bounded retries
    down    the peer's port refuses connections: the sandbox closes that uvicorn
            server (and its open connections) and listens again on "up". A 503 is
            a failure, not "down"; only the control server can take a peer down.

The processor peer (`payment_sandbox.processor`) also plays, and only it:

    decline                every charge is declined (402 card_declined), every refund fails
    pending                charges answer `processing` and refunds `pending`; they succeed
                           `delay_seconds` later and a webhook says so
    timeout_after_capture  the money moves and the idempotent answer is saved, then the
                           request is held open until the client gives up

Faults apply to the calls the Payment Service makes -- `GET /v1/trips/{id}` and
`POST /v1/notifications` -- so tests can still set up trips (`PUT /v1/trips/{id}`)
and inspect deliveries (`GET/DELETE /v1/notifications`) while a peer misbehaves.
"down" closes the whole port, of course.

HTTP control. Bodies are JSON (read as JSON whatever the Content-Type, so a bare
`curl -d` works); every field but `mode` is optional and falls back to the
start-up default (`--delay`, `--fail-status`, `--flaky-count`), not to the
previous setting. Unknown fields and modes are a 422.

On each peer (Trip :8081, Notification :8084, processor :8087):

    GET  /_sandbox/faults    current fault of this peer
    PUT  /_sandbox/faults    {"mode": "normal"}
                             {"mode": "slow", "delay_seconds": 2.5}
                             {"mode": "fail", "status_code": 503}
                             {"mode": "flaky", "count": 2, "status_code": 502}
                             ("down"/"up" answer 409: a closed port cannot
                             receive the request that opens it again)

On the control server (:8085), for `{peer}` = `trip`, `notification` or `processor`:

    GET  /                   every peer: url, listening, fault
    GET  /{peer}/faults      one peer
    PUT  /{peer}/faults      {"mode": "down"}  stop listening (connection refused)
                             {"mode": "up"}    listen again, in normal mode
                             any other mode as above; it also brings a down peer up
    PUT  /processor/faults   also {"mode": "decline"}, {"mode": "pending", "delay_seconds": 2},
                             {"mode": "timeout_after_capture"} (422 for the other peers)
    POST /reset              every peer up and normal, runtime trips dropped,
                             trip counters, notifications and the processor ledger cleared

What the peers received (never faulted): on the Trip peer `GET /_sandbox/stats`
(`?trip_id=N` adds one trip's count) and `DELETE /_sandbox/stats`; on the
Notification peer `GET /v1/notifications` and `DELETE /v1/notifications`; for the
processor `GET /processor/ledger` and `GET /processor/webhooks` on the control server.

For example:

    curl -X PUT localhost:8085/trip/faults -d '{"mode": "down"}'
    curl -X PUT localhost:8085/trip/faults -d '{"mode": "up"}'
    curl -X PUT localhost:8084/_sandbox/faults -d '{"mode": "flaky", "count": 3}'
    curl -X PUT localhost:8085/processor/faults -d '{"mode": "timeout_after_capture"}'
    curl localhost:8085/processor/ledger
    curl localhost:8085/
"""

import asyncio
import contextlib
from enum import StrEnum
from http import HTTPStatus
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from payment_sandbox._json import json_body, json_body_openapi

DEFAULT_DELAY_SECONDS = 1.0
DEFAULT_FAIL_STATUS = 500
DEFAULT_FLAKY_COUNT = 1
PROBLEM_JSON = "application/problem+json"


class FaultMode(StrEnum):
    """How a sandbox peer misbehaves; see the module docstring."""

    NORMAL = "normal"
    SLOW = "slow"
    FAIL = "fail"
    FLAKY = "flaky"
    DOWN = "down"
    DECLINE = "decline"
    PENDING = "pending"
    TIMEOUT_AFTER_CAPTURE = "timeout_after_capture"


# Modes only a payment processor can play; the Trip and Notification peers refuse them.
PROCESSOR_MODES = frozenset({FaultMode.DECLINE, FaultMode.PENDING, FaultMode.TIMEOUT_AFTER_CAPTURE})
COMMON_MODES = frozenset(FaultMode) - PROCESSOR_MODES


def _check_status(status_code: int) -> int:
    """Only error statuses make sense for an injected failure."""
    if not 400 <= status_code <= 599:
        raise ValueError(f"fail status must be 400..599, got {status_code}")
    return status_code


class FaultSwitch:
    """The fault one peer plays right now, shared by its app, the runner and the tests."""

    def __init__(
        self,
        mode: FaultMode | str = FaultMode.NORMAL,
        *,
        delay_seconds: float = DEFAULT_DELAY_SECONDS,
        status_code: int = DEFAULT_FAIL_STATUS,
        count: int = DEFAULT_FLAKY_COUNT,
        modes: frozenset[FaultMode] = COMMON_MODES,
    ) -> None:
        self.modes = modes
        if delay_seconds < 0:
            raise ValueError(f"delay must be >= 0 seconds, got {delay_seconds}")
        if count < 1:
            raise ValueError(f"flaky count must be >= 1, got {count}")
        self.default_delay_seconds = delay_seconds
        self.default_status_code = _check_status(status_code)
        self.default_count = count
        self.mode = FaultMode.NORMAL
        self.delay_seconds = delay_seconds
        self.status_code = status_code
        self.remaining_failures = 0
        self.injected_failures = 0
        self._sleepers: set[asyncio.Future[None]] = set()
        self.interruptions = 0  # how often `interrupt` ran: lets a long wait notice it
        self.set(mode)

    def set(
        self,
        mode: FaultMode | str,
        *,
        delay_seconds: float | None = None,
        status_code: int | None = None,
        count: int | None = None,
    ) -> dict[str, Any]:
        """Switch to `mode`; omitted parameters take the start-up defaults, not the old values."""
        mode = FaultMode(mode)
        if mode not in self.modes:
            raise ValueError(f"mode {mode.value!r} is for the sandbox processor only")
        delay = self.default_delay_seconds if delay_seconds is None else delay_seconds
        if delay < 0:
            raise ValueError(f"delay must be >= 0 seconds, got {delay}")
        status = _check_status(self.default_status_code if status_code is None else status_code)
        failures = self.default_count if count is None else count
        if failures < 1:
            raise ValueError(f"flaky count must be >= 1, got {failures}")
        self.mode = mode
        self.delay_seconds = delay
        self.status_code = status
        self.remaining_failures = failures if mode is FaultMode.FLAKY else 0
        return self.snapshot()

    def reset(self) -> None:
        """Back to normal with the start-up defaults and a zero failure count (between tests)."""
        self.set(FaultMode.NORMAL)
        self.injected_failures = 0

    def snapshot(self) -> dict[str, Any]:
        """The state as JSON, for the control endpoints and test assertions."""
        return {
            "mode": self.mode.value,
            "delay_seconds": self.delay_seconds,
            "status_code": self.status_code,
            "remaining_failures": self.remaining_failures,
            "injected_failures": self.injected_failures,
        }

    async def gate(self) -> int | None:
        """Play the fault for one request: sleep if slow; return a status to fail with, or None."""
        match self.mode:
            case FaultMode.SLOW:
                await self._sleep(self.delay_seconds)
                return None
            case FaultMode.FAIL:
                self.injected_failures += 1
                return self.status_code
            case FaultMode.FLAKY:
                # No await between the check and the update: requests cannot race here.
                self.remaining_failures -= 1
                status = self.status_code
                if self.remaining_failures <= 0:
                    self.mode = FaultMode.NORMAL
                    self.remaining_failures = 0
                self.injected_failures += 1
                return status
            case FaultMode.DOWN:
                # Only reachable when the app runs without the runner that closes the port.
                self.injected_failures += 1
                return HTTPStatus.SERVICE_UNAVAILABLE
            case _:
                return None

    def interrupt(self) -> None:
        """Cut short every slow sleep in progress, so a peer taken down or stopped never waits."""
        self.interruptions += 1
        for waiter in self._sleepers:
            if not waiter.done():
                waiter.set_result(None)

    async def sleep(self, seconds: float) -> None:
        """Wait as a slow peer does: cut short by `interrupt` (the peer going down or stopping)."""
        await self._sleep(seconds)

    async def _sleep(self, seconds: float) -> None:
        """Sleep that `interrupt` can end early (a future per sleep: no loop bound at creation)."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.add(waiter)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, timeout=seconds)
        finally:
            self._sleepers.discard(waiter)


class FaultUpdate(BaseModel):
    """Body of `PUT .../faults`; `up` is the control server's way back from `down`."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal[
        "normal",
        "slow",
        "fail",
        "flaky",
        "down",
        "up",
        "decline",
        "pending",
        "timeout_after_capture",
    ]
    delay_seconds: float | None = Field(
        None, ge=0, le=3600, description="for slow, and the processor's pending"
    )
    status_code: int | None = Field(None, ge=400, le=599, description="for fail and flaky")
    count: int | None = Field(None, ge=1, le=1_000_000, description="for flaky")


def fault_response(status_code: int, service: str, mode: FaultMode) -> JSONResponse:
    """The problem+json answer of an injected failure, saying it was injected."""
    try:
        title = HTTPStatus(status_code).phrase
    except ValueError:
        title = "Injected fault"
    return JSONResponse(
        status_code=status_code,
        media_type=PROBLEM_JSON,
        content={
            "type": "about:blank",
            "title": title,
            "status": status_code,
            "detail": f"sandbox {service} service: injected {mode.value} fault",
        },
    )


def create_fault_router(faults: FaultSwitch, service: str) -> APIRouter:
    """`GET/PUT /_sandbox/faults` on a peer, for every mode that keeps its port open."""
    router = APIRouter(prefix="/_sandbox", tags=["sandbox control"])

    @router.get("/faults")
    async def get_faults() -> dict[str, Any]:
        """Show this peer's current fault."""
        return faults.snapshot()

    @router.put("/faults", response_model=None, openapi_extra=json_body_openapi(FaultUpdate))
    async def put_faults(
        update: Annotated[FaultUpdate, Depends(json_body(FaultUpdate))],
    ) -> dict[str, Any] | JSONResponse:
        """Set this peer's fault; down/up belong to the control server."""
        if update.mode in {"down", "up"}:
            return JSONResponse(
                status_code=HTTPStatus.CONFLICT,
                content={
                    "detail": f"'{update.mode}' is handled by the sandbox control server "
                    f"(default port 8085): PUT /{service}/faults"
                },
            )
        try:
            return faults.set(
                update.mode,
                delay_seconds=update.delay_seconds,
                status_code=update.status_code,
                count=update.count,
            )
        except ValueError as exc:  # a processor-only mode on another peer
            return JSONResponse(
                status_code=HTTPStatus.UNPROCESSABLE_ENTITY, content={"detail": str(exc)}
            )

    return router
