"""Sandbox control server: takes peers down and back up, and sets their faults.

It lives on its own port (8085 by default) because a peer that is down cannot
take the request that brings it back. Endpoints (see `faults` for the bodies):

    GET  /                 every peer: url, listening, fault
    GET  /{peer}/faults    one peer; {peer} is `trip`, `notification` or `processor`
    PUT  /{peer}/faults    {"mode": "down" | "up" | "normal" | "slow" | "fail" | "flaky", ...}
                           the processor also: "decline" | "pending" | "timeout_after_capture"
    GET  /processor/ledger per PaymentIntent: captured, capture_count, refunded, refunds
                           (minor units; `?payment_id=` for one payment)
    GET  /processor/webhooks  where events go and the latest deliveries
    POST /reset            every peer up and normal; trips, counters, ledger cleared
    GET  /health           {"status": "UP"}
"""

from enum import StrEnum
from http import HTTPStatus
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, Query
from fastapi.responses import JSONResponse

from payment_sandbox._json import json_body, json_body_openapi
from payment_sandbox.errors import SandboxError, UnsupportedFaultError
from payment_sandbox.faults import FaultUpdate

if TYPE_CHECKING:
    from payment_sandbox.runner import Sandbox


class Peer(StrEnum):
    """The services the sandbox stands in for."""

    TRIP = "trip"
    NOTIFICATION = "notification"
    PROCESSOR = "processor"


def create_control_app(sandbox: "Sandbox") -> FastAPI:
    """The control API over one running `Sandbox`."""
    app = FastAPI(
        title="Sandbox control",
        summary="Fault injection for the sandbox Trip, Notification and processor services.",
        version="1.0.0",
    )

    @app.get("/")
    async def status() -> dict[str, Any]:
        """Where each peer listens, whether it does, and its fault."""
        return sandbox.status()

    @app.get("/processor/ledger")
    async def processor_ledger(
        payment_id: Annotated[str | None, Query(description="metadata[payment_id]")] = None,
    ) -> dict[str, Any]:
        """What the sandbox processor captured and refunded, per PaymentIntent (minor units)."""
        return sandbox.processor.ledger(payment_id)

    @app.get("/processor/webhooks")
    async def processor_webhooks() -> dict[str, Any]:
        """The processor's webhook target and its latest deliveries."""
        return sandbox.processor.webhook_status()

    @app.get("/{peer}/faults")
    async def get_faults(peer: Peer) -> dict[str, Any]:
        """One peer's state."""
        return sandbox.peer_status(peer)

    @app.put("/{peer}/faults", response_model=None, openapi_extra=json_body_openapi(FaultUpdate))
    async def put_faults(
        peer: Peer, update: Annotated[FaultUpdate, Depends(json_body(FaultUpdate))]
    ) -> dict[str, Any] | JSONResponse:
        """Set a peer's fault; `down` closes its port and any other mode opens it again."""
        try:
            return await sandbox.set_fault(
                peer,
                update.mode,
                delay_seconds=update.delay_seconds,
                status_code=update.status_code,
                count=update.count,
            )
        except UnsupportedFaultError as exc:  # e.g. "decline" for the Trip service
            return JSONResponse(
                status_code=HTTPStatus.UNPROCESSABLE_ENTITY, content={"detail": str(exc)}
            )
        except SandboxError as exc:  # e.g. something else took the port while it was down
            return JSONResponse(status_code=HTTPStatus.CONFLICT, content={"detail": str(exc)})

    @app.post("/reset")
    async def reset() -> dict[str, Any]:
        """Everything back to the start-up state, e.g. between manual experiments."""
        await sandbox.reset()
        return sandbox.status()

    @app.get("/health")
    async def health() -> dict[str, str]:
        """Liveness for scripts waiting on the sandbox."""
        return {"status": "UP"}

    return app
