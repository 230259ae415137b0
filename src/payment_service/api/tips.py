"""POST /v1/payments/{id}/tips and POST /v1/payments/{id}/adjustments (issue 12)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header
from starlette.responses import Response

from payment_service.api.payments import PaymentId
from payment_service.api.routing import MoneyRoute, idempotent_response
from payment_service.auth.guard import RequireCharge
from payment_service.dependencies import CallerDep, GatewayDep, SessionFactoryDep, SettingsDep
from payment_service.errors import problem_responses
from payment_service.schemas.common import IdempotencyKeyHeader
from payment_service.schemas.ledger import AdjustmentRequest, TipRequest
from payment_service.schemas.payment import ChargeResponse
from payment_service.schemas.refund import RefundResponse
from payment_service.services.adjustments import AdjustmentService
from payment_service.services.idempotency import resolve_key
from payment_service.services.tips import TipService

router = APIRouter(prefix="/v1/payments", tags=["payments"], route_class=MoneyRoute)


@router.post(
    "/{payment_id}/tips",
    operation_id="tipPayment",
    status_code=201,
    response_model=ChargeResponse,
    summary="Tip the driver of a paid trip (idempotent)",
    description=(
        "Charges a TIP payment linked to the trip's fare payment (which must be SUCCESS or "
        "PARTIALLY_REFUNDED, at most `TIP_MAX_DAYS` old); the tips of one fare total at most "
        "`TIP_MAX_AMOUNT`. All of it is the driver's (no commission). 201 when it succeeded, "
        "202 when PENDING or FAILED; same key and body replays, another body is a 422, "
        "in flight a 409."
    ),
    responses={
        202: {"model": ChargeResponse, "description": "Tip PENDING or FAILED"},
        **problem_responses(400, 404, 409, 422, 429, 500, 503),
    },
    dependencies=[RequireCharge],
)
async def tip(
    payment_id: PaymentId,
    body: TipRequest,
    settings: SettingsDep,
    session_factory: SessionFactoryDep,
    gateway: GatewayDep,
    caller: CallerDep,
    idempotency_key: Annotated[IdempotencyKeyHeader | None, Header(alias="Idempotency-Key")] = None,
) -> Response:
    key = resolve_key(body.idempotency_key, idempotency_key)
    service = TipService(
        settings=settings,
        session_factory=session_factory,
        gateway=gateway,
        client_id=caller.client_id,
    )
    return idempotent_response(await service.tip(payment_id, body.amount, key))


@router.post(
    "/{payment_id}/adjustments",
    operation_id="adjustFare",
    status_code=201,
    response_model=ChargeResponse,
    summary="Correct a trip's fare up or down (idempotent)",
    description=(
        "A higher `new_fare` charges the difference as an ADJUSTMENT payment linked to the "
        "fare (201, or 202 when PENDING/FAILED); a lower one refunds the difference on the "
        "fare payment through the refund path (200 with the refund, 202 while pending, never "
        "more than remains refundable: 422). The fare must be SUCCESS or PARTIALLY_REFUNDED "
        "(else 409). Scope `charge` in both directions. The receipt shows both fares and "
        "the reason."
    ),
    responses={
        200: {"model": RefundResponse, "description": "Fare lowered: the refund"},
        202: {"model": ChargeResponse, "description": "Adjustment PENDING or FAILED"},
        **problem_responses(400, 404, 409, 422, 429, 500, 503),
    },
    dependencies=[RequireCharge],
)
async def adjust(
    payment_id: PaymentId,
    body: AdjustmentRequest,
    settings: SettingsDep,
    session_factory: SessionFactoryDep,
    gateway: GatewayDep,
    caller: CallerDep,
    idempotency_key: Annotated[IdempotencyKeyHeader | None, Header(alias="Idempotency-Key")] = None,
) -> Response:
    key = resolve_key(body.idempotency_key, idempotency_key)
    service = AdjustmentService(
        settings=settings,
        session_factory=session_factory,
        gateway=gateway,
        client_id=caller.client_id,
    )
    return idempotent_response(await service.adjust(payment_id, body.new_fare, body.reason, key))
