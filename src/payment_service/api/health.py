"""Health endpoints: the seed's /health, plus liveness and readiness for orchestrators."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Request, Response

from payment_service import SERVICE_NAME, __version__
from payment_service.api.routing import LeanRoute
from payment_service.errors import problem_responses
from payment_service.jsonutil import MoneyJSONResponse, dumps, utc_timestamp
from payment_service.schemas.health import Health, Readiness
from payment_service.services.health import expected_revision, not_ready_reason

router = APIRouter(tags=["health"], route_class=LeanRoute)


@router.get(
    "/health",
    operation_id="health",
    response_model=Health,
    summary="Service and database health (seed API)",
    responses={503: {"model": Health, "description": "The database is unreachable"}},
)
async def health(request: Request) -> MoneyJSONResponse:
    up = (await request.app.state.health_probe()).up
    body = {
        "service": SERVICE_NAME,
        "version": __version__,
        "status": "UP" if up else "DOWN",
        "database_status": "UP" if up else "DOWN",
        "timestamp": utc_timestamp(datetime.now(UTC)),
    }
    return MoneyJSONResponse(body, status_code=200 if up else 503)


_LIVE_BODY = dumps({"status": "UP"})


@router.get(
    "/health/live",
    operation_id="liveness",
    summary="Liveness: the process answers",
    response_model=dict[str, str],
    responses=problem_responses(500),
)
async def live() -> Response:
    # The same answer every time, encoded once: a returned Response skips FastAPI's
    # response-model validation and serialisation (the model still documents it).
    return Response(_LIVE_BODY, media_type="application/json")


@router.get(
    "/health/ready",
    operation_id="readiness",
    response_model=Readiness,
    summary="Readiness: database reachable and schema at the Alembic head",
    responses={503: {"model": Readiness, "description": "Not ready"}, **problem_responses(500)},
)
async def ready(request: Request) -> MoneyJSONResponse:
    state = await request.app.state.health_probe()
    head = expected_revision()
    reason = not_ready_reason(state, head)
    is_ready = reason is None
    body = {
        "status": "UP" if is_ready else "DOWN",
        "database_status": "UP" if state.up else "DOWN",
        "schema_revision": state.revision,
        "expected_revision": head,
        "reason": reason,
    }
    return MoneyJSONResponse(body, status_code=200 if is_ready else 503)
