"""POST /v1/payments/charge."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header
from starlette.responses import Response

from payment_service.api.routing import MoneyRoute, idempotent_response
from payment_service.auth.guard import RequireCharge
from payment_service.dependencies import (
    CallerDep,
    GatewayDep,
    SessionFactoryDep,
    SettingsDep,
    TripClientDep,
)
from payment_service.errors import problem_responses
from payment_service.schemas.common import IdempotencyKeyHeader
from payment_service.schemas.payment import ChargeRequest, ChargeResponse
from payment_service.services.charge import ChargeService
from payment_service.services.idempotency import resolve_key

router = APIRouter(
    prefix="/v1/payments", tags=["payments"], route_class=MoneyRoute, dependencies=[RequireCharge]
)


@router.post(
    "/charge",
    operation_id="chargeTrip",
    status_code=201,
    response_model=ChargeResponse,
    summary="Charge a completed trip (idempotent)",
    description=(
        "201 when the payment succeeded, 202 when it is PENDING or FAILED. Retrying with the "
        "same idempotency key returns the stored answer with `Idempotent-Replayed: true`. "
        'Force a gateway outcome with metadata `{"simulate": "decline"|"pending"}`.'
    ),
    responses={
        202: {"model": ChargeResponse, "description": "Payment PENDING or FAILED"},
        **problem_responses(400, 409, 422, 429, 500, 503),
    },
)
async def charge(
    body: ChargeRequest,
    settings: SettingsDep,
    session_factory: SessionFactoryDep,
    trip_client: TripClientDep,
    gateway: GatewayDep,
    caller: CallerDep,
    idempotency_key: Annotated[IdempotencyKeyHeader | None, Header(alias="Idempotency-Key")] = None,
) -> Response:
    key = resolve_key(body.idempotency_key, idempotency_key)
    service = ChargeService(
        settings=settings,
        session_factory=session_factory,
        trip_client=trip_client,
        gateway=gateway,
        client_id=caller.client_id,
    )
    outcome = await service.charge(body, key)
    return idempotent_response(outcome)
