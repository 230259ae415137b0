"""Outbox rows: enqueued inside the business transaction, claimed by dispatchers.

Claiming takes a lease instead of holding a transaction across the HTTP call: in
one short transaction the due rows are locked with `FOR UPDATE SKIP LOCKED` (so
concurrent dispatchers pick disjoint rows and never wait on each other) and their
`next_attempt_at` is pushed to `now() + lease`. Until the lease runs out no other
dispatcher sees them as due; if the claimer dies, they become due again by
themselves. The `next_attempt_at` a claim returns doubles as its fencing token:
a retry or release only applies while the row still carries that exact value.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Interval, case, func, insert, literal, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from payment_service.models import OutboxMessage
from payment_service.models.enums import OutboxStatus
from payment_service.tracing import current_traceparent

LAST_ERROR_MAX_CHARS = 500


@dataclass(frozen=True, slots=True)
class ClaimedMessage:
    """A leased outbox row: deliver it, then mark it before `lease_until`."""

    id: int
    message_type: str
    payment_id: int
    payload: dict[str, Any]
    attempts: int
    lease_until: datetime
    event_id: uuid.UUID
    traceparent: str | None = None


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """What `payment-service outbox list` shows of a message: never its payload."""

    id: int
    event_id: uuid.UUID
    message_type: str
    payment_id: int
    status: str
    attempts: int
    next_attempt_at: datetime
    last_error: str | None


def _seconds(value: float) -> Any:
    return literal(timedelta(seconds=value), Interval())


class OutboxRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def enqueue(self, message_type: str, payment_id: int, payload: dict[str, Any]) -> None:
        """Add a message in the caller's transaction: it commits or vanishes with the payment.

        The current trace context is stored with it, so the delivery (later, in another
        task or process) is traced as part of the charge or refund that caused it.
        """
        await self.session.execute(
            insert(OutboxMessage).values(
                message_type=message_type,
                payment_id=payment_id,
                payload=payload,
                traceparent=current_traceparent(),
            )
        )

    async def claim_due(self, limit: int, lease_seconds: float) -> list[ClaimedMessage]:
        """Lease up to `limit` due PENDING rows, most overdue first; rows others hold are skipped.

        Commit right after: the row locks only guard the claim itself, the lease
        (`next_attempt_at = now() + lease_seconds`) guards the delivery.
        """
        due = (
            select(OutboxMessage.id)
            .where(
                OutboxMessage.status == OutboxStatus.PENDING.value,
                OutboxMessage.next_attempt_at <= func.now(),
            )
            .order_by(OutboxMessage.next_attempt_at, OutboxMessage.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .cte("due")
        )
        statement = (
            update(OutboxMessage)
            .where(OutboxMessage.id.in_(select(due.c.id)))
            .values(next_attempt_at=func.now() + _seconds(lease_seconds))
            .returning(
                OutboxMessage.id,
                OutboxMessage.message_type,
                OutboxMessage.payment_id,
                OutboxMessage.payload,
                OutboxMessage.attempts,
                OutboxMessage.next_attempt_at,
                OutboxMessage.event_id,
                OutboxMessage.traceparent,
            )
            .execution_options(synchronize_session=False)
        )
        rows = (await self.session.execute(statement)).all()
        claimed = [ClaimedMessage(*row) for row in rows]
        claimed.sort(key=lambda message: message.id)
        return claimed

    async def count_pending(self) -> int:
        """PENDING rows, leased or not (the `outbox_pending` gauge)."""
        statement = select(func.count()).where(OutboxMessage.status == OutboxStatus.PENDING.value)
        return int((await self.session.execute(statement)).scalar_one())

    async def mark_delivered(self, *messages: ClaimedMessage) -> int:
        """Record 2xx answers in one statement: DELIVERED with their time.

        Applies even if a lease ran out meanwhile (the message did arrive).
        Returns how many rows changed.
        """
        if not messages:
            return 0
        statement = (
            update(OutboxMessage)
            .where(
                OutboxMessage.id.in_([message.id for message in messages]),
                OutboxMessage.status == OutboxStatus.PENDING.value,
            )
            .values(
                status=OutboxStatus.DELIVERED.value,
                delivered_at=func.now(),
                attempts=OutboxMessage.attempts + 1,
            )
            .execution_options(synchronize_session=False)
        )
        return (await self.session.execute(statement)).rowcount  # type: ignore[attr-defined]

    async def mark_failed_attempt(
        self, message: ClaimedMessage, error: str, *, retry_in_seconds: float, max_attempts: int
    ) -> str | None:
        """Count a failed attempt: retry after `retry_in_seconds`, or FAILED at `max_attempts`.

        Returns the row's new status, or None when the lease was lost (another
        dispatcher has the row now, so its bookkeeping wins).
        """
        attempts = OutboxMessage.attempts + 1
        statement = (
            update(OutboxMessage)
            .where(*self._still_leased(message))
            .values(
                attempts=attempts,
                last_error=error[:LAST_ERROR_MAX_CHARS],
                next_attempt_at=func.now() + _seconds(retry_in_seconds),
                status=case(
                    (attempts >= max_attempts, OutboxStatus.FAILED.value),
                    else_=OutboxStatus.PENDING.value,
                ),
            )
            .returning(OutboxMessage.status)
            .execution_options(synchronize_session=False)
        )
        return (await self.session.execute(statement)).scalar_one_or_none()

    async def release(self, message: ClaimedMessage) -> bool:
        """Hand back a claimed row that was not attempted: due again at once, no attempt counted."""
        statement = (
            update(OutboxMessage)
            .where(*self._still_leased(message))
            .values(next_attempt_at=func.now())
            .execution_options(synchronize_session=False)
        )
        return (await self.session.execute(statement)).rowcount == 1  # type: ignore[attr-defined]

    async def list_messages(
        self, status: OutboxStatus | None = None, limit: int = 50
    ) -> list[OutboxRow]:
        """Messages for operators, newest first (optionally of one status)."""
        statement = (
            select(
                OutboxMessage.id,
                OutboxMessage.event_id,
                OutboxMessage.message_type,
                OutboxMessage.payment_id,
                OutboxMessage.status,
                OutboxMessage.attempts,
                OutboxMessage.next_attempt_at,
                OutboxMessage.last_error,
            )
            .order_by(OutboxMessage.id.desc())
            .limit(limit)
        )
        if status is not None:
            statement = statement.where(OutboxMessage.status == status.value)
        return [OutboxRow(*row) for row in (await self.session.execute(statement)).all()]

    async def requeue(self, ids: Sequence[int] | None = None) -> list[int]:
        """FAILED -> PENDING with attempts reset, due now: the given ids, or every FAILED row.

        Only FAILED rows move (a PENDING one may be on the wire, a DELIVERED one arrived);
        `last_error` stays until the next attempt replaces it. Returns the ids requeued.
        """
        statement = (
            update(OutboxMessage)
            .where(OutboxMessage.status == OutboxStatus.FAILED.value)
            .values(status=OutboxStatus.PENDING.value, attempts=0, next_attempt_at=func.now())
            .returning(OutboxMessage.id)
            .execution_options(synchronize_session=False)
        )
        if ids is not None:
            statement = statement.where(OutboxMessage.id.in_(list(ids)))
        return sorted((await self.session.execute(statement)).scalars())

    @staticmethod
    def _still_leased(message: ClaimedMessage) -> tuple[Any, ...]:
        return (
            OutboxMessage.id == message.id,
            OutboxMessage.status == OutboxStatus.PENDING.value,
            OutboxMessage.next_attempt_at == message.lease_until,
        )
