"""POST /v1/gateway/webhooks/{provider}: signed processor events (no API key: the
signature is the credential)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from payment_service.dependencies import GatewayDep, SessionFactoryDep
from payment_service.errors import problem_responses
from payment_service.services.webhooks import receive_webhook

router = APIRouter(prefix="/v1/gateway/webhooks", tags=["gateway"])


@router.post(
    "/{provider}",
    summary="Receive a signed payment-processor event",
    description=(
        "Stripe events (`payment_intent.succeeded`, `payment_intent.payment_failed`, "
        "`payment_intent.processing`, refund updates) signed with `Stripe-Signature`. "
        "A bad or stale signature (older than 5 minutes) is a 400 and changes nothing; an "
        "event delivered twice is applied once."
    ),
    responses=problem_responses(400, 404, 422, 500, 503),
)
async def receive(
    provider: str, request: Request, session_factory: SessionFactoryDep, gateway: GatewayDep
) -> dict[str, str]:
    payload = await request.body()
    headers = {key.lower(): value for key, value in request.headers.items()}
    outcome = await receive_webhook(session_factory, gateway, provider, payload, headers)
    return {"received": "true", "outcome": outcome}
