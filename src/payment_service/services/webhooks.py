"""Processor webhooks: verified, stored once per event id, applied like any other outcome.

The gateway verifies the signature (`parse_webhook`; Stripe's scheme with a 5-minute
tolerance); a bad, stale or replayed signature is a 400 and changes nothing. The
event id is inserted into `gateway_events` (unique per provider) in the same
transaction that applies it, so a redelivered event changes nothing either. The
state change goes through `services/transitions.py`, like the request's own.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Literal

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from payment_service.clients.gateway import (
    ChargeResult,
    GatewayEvent,
    InvalidWebhookError,
    PaymentGateway,
    RefundResult,
)
from payment_service.db import SessionFactory
from payment_service.errors import BadRequestError, NotFoundError
from payment_service.jsonutil import loads
from payment_service.models import Payment, Refund, WebhookEvent
from payment_service.observability import GATEWAY_WEBHOOKS
from payment_service.repositories.payment import PaymentRepository
from payment_service.services.transitions import finish_charge, finish_refund

log = logging.getLogger(__name__)

WebhookOutcome = Literal["applied", "duplicate", "ignored"]


class UnknownWebhookProviderError(NotFoundError):
    type = "webhook-provider-unknown"
    title = "Unknown Webhook Provider"


class InvalidWebhookSignatureError(BadRequestError):
    type = "webhook-invalid"
    title = "Webhook Not Verified"


async def receive_webhook(
    session_factory: SessionFactory,
    gateway: PaymentGateway,
    provider: str,
    payload: bytes,
    headers: Mapping[str, str],
) -> WebhookOutcome:
    if provider != gateway.name:
        raise UnknownWebhookProviderError(
            f"This service takes webhooks from {gateway.name!r} only, not {provider!r}."
        )
    try:
        event = gateway.parse_webhook(payload, headers)
    except InvalidWebhookError as exc:
        GATEWAY_WEBHOOKS.labels(outcome="invalid").inc()
        log.warning("webhook rejected", extra={"provider": provider, "reason": str(exc)})
        raise InvalidWebhookSignatureError(f"The webhook did not verify: {exc}.") from None
    if event is None:
        GATEWAY_WEBHOOKS.labels(outcome="ignored").inc()
        return "ignored"
    outcome = await _apply(session_factory, provider, event, payload)
    GATEWAY_WEBHOOKS.labels(outcome=outcome).inc()
    return outcome


async def _apply(
    session_factory: SessionFactory, provider: str, event: GatewayEvent, payload: bytes
) -> WebhookOutcome:
    async with session_factory() as session, session.begin():
        payment_id = await _payment_of(session, event)
        if payment_id is not None:
            # Lock the payment before anything else: the event row's foreign key takes a
            # share lock on it, and two transactions that each hold that and then ask for
            # the row lock deadlock. Every writer of a payment locks it first.
            await PaymentRepository(session).get_for_update(payment_id)
        stored = await session.execute(
            insert(WebhookEvent)
            .values(
                provider=provider,
                event_id=event.event_id,
                event_type=f"{event.kind}.{event.payment_status or event.refund_status}",
                payment_id=payment_id,
                payload=loads(payload),
            )
            .on_conflict_do_nothing(constraint="uq_gateway_events_event")
            .returning(WebhookEvent.id)
        )
        if stored.scalar_one_or_none() is None:
            return "duplicate"
        if payment_id is None:
            log.warning("webhook for an unknown payment", extra={"event_id": event.event_id})
            return "ignored"
        if event.kind == "payment" and event.payment_status is not None:
            result = ChargeResult(
                event.payment_status,
                event.gateway_reference,
                f"Payment {event.payment_status.lower()} (processor event)",
                failure_reason=event.failure_reason,
            )
            await finish_charge(session, payment_id, result, source=f"webhook:{provider}")
        elif event.kind == "refund" and event.refund_status is not None:
            refund_id = await _refund_of(session, event)
            if refund_id is None:
                return "ignored"
            await finish_refund(
                session,
                refund_id,
                RefundResult(event.refund_status, event.gateway_reference, event.failure_reason),
                source=f"webhook:{provider}",
            )
        return "applied"


async def _payment_of(session: AsyncSession, event: GatewayEvent) -> int | None:
    """Our payment: from the object's metadata, else by the processor's id."""
    if event.payment_id is not None:
        found = await session.scalar(select(Payment.id).where(Payment.id == event.payment_id))
        if found is not None:
            return int(found)
    if event.kind == "payment":
        found = await session.scalar(
            select(Payment.id).where(Payment.gateway_reference == event.gateway_reference)
        )
        return int(found) if found is not None else None
    if event.refund_id is not None:
        found = await session.scalar(select(Refund.payment_id).where(Refund.id == event.refund_id))
        return int(found) if found is not None else None
    return None


async def _refund_of(session: AsyncSession, event: GatewayEvent) -> int | None:
    if event.refund_id is not None:
        found = await session.scalar(select(Refund.id).where(Refund.id == event.refund_id))
        if found is not None:
            return int(found)
    found = await session.scalar(
        select(Refund.id).where(Refund.gateway_reference == event.gateway_reference)
    )
    return int(found) if found is not None else None
