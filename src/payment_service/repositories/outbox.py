"""Outbox rows: enqueued inside the business transaction, claimed by dispatchers."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from payment_service.models import OutboxMessage


class OutboxRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def enqueue(self, message_type: str, payment_id: int, payload: dict[str, Any]) -> None:
        """Add a message in the caller's transaction: it commits or vanishes with the payment."""
        await self.session.execute(
            insert(OutboxMessage).values(
                message_type=message_type, payment_id=payment_id, payload=payload
            )
        )
