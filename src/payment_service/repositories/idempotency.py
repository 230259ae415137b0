"""Idempotency key rows: claim with INSERT .. ON CONFLICT, lease, complete, release."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from payment_service.models import IdempotencyKey
from payment_service.models.enums import IdempotencyState


@dataclass(frozen=True, slots=True)
class KeyRow:
    id: int
    fingerprint: str
    state: str
    locked_until: datetime | None
    expires_at: datetime
    response_status: int | None
    response_body: str | None
    payment_id: int | None
    refund_id: int | None
    db_now: datetime


class IdempotencyRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def insert_if_absent(
        self,
        *,
        operation: str,
        client_id: str,
        key: str,
        fingerprint: str,
        token: str,
        lease: timedelta,
        ttl: timedelta,
    ) -> int | None:
        """Insert an in-flight key; None when the (operation, client, key) row exists."""
        result = await self.session.execute(
            insert(IdempotencyKey)
            .values(
                operation=operation,
                client_id=client_id,
                key=key,
                fingerprint=fingerprint,
                state=IdempotencyState.IN_PROGRESS.value,
                lease_token=token,
                locked_until=func.now() + lease,
                expires_at=func.now() + ttl,
            )
            .on_conflict_do_nothing(constraint="uq_idempotency_keys_scope")
            .returning(IdempotencyKey.id)
        )
        return result.scalar_one_or_none()

    async def find(
        self, *, operation: str, client_id: str, key: str, lock: bool = False
    ) -> KeyRow | None:
        """The key's row; `lock=True` holds it (FOR UPDATE) until the transaction ends."""
        statement = select(
            IdempotencyKey.id,
            IdempotencyKey.fingerprint,
            IdempotencyKey.state,
            IdempotencyKey.locked_until,
            IdempotencyKey.expires_at,
            IdempotencyKey.response_status,
            IdempotencyKey.response_body,
            IdempotencyKey.payment_id,
            IdempotencyKey.refund_id,
            func.now().label("db_now"),
        ).where(
            IdempotencyKey.operation == operation,
            IdempotencyKey.client_id == client_id,
            IdempotencyKey.key == key,
        )
        if lock:
            statement = statement.with_for_update()
        row = (await self.session.execute(statement)).one_or_none()
        return KeyRow(**row._asdict()) if row else None

    async def take_over(
        self,
        key_id: int,
        *,
        fingerprint: str,
        token: str,
        lease: timedelta,
        ttl: timedelta | None,
    ) -> None:
        """Lease a row whose previous holder expired or crashed (and reset it if expired)."""
        values: dict[str, object] = {
            "state": IdempotencyState.IN_PROGRESS.value,
            "fingerprint": fingerprint,
            "lease_token": token,
            "locked_until": func.now() + lease,
            "response_status": None,
            "response_body": None,
        }
        if ttl is not None:  # an expired key starts over: it no longer names a payment
            values["expires_at"] = func.now() + ttl
            values["created_at"] = func.now()
            values["payment_id"] = None
            values["refund_id"] = None
        await self.session.execute(
            update(IdempotencyKey).where(IdempotencyKey.id == key_id).values(**values)
        )

    async def bind(
        self, key_id: int, token: str, *, payment_id: int, refund_id: int | None = None
    ) -> bool:
        """Tie an in-flight key to the row it created; False when our lease was taken over."""
        result = await self.session.execute(
            update(IdempotencyKey)
            .where(IdempotencyKey.id == key_id, IdempotencyKey.lease_token == token)
            .values(payment_id=payment_id, refund_id=refund_id)
        )
        return result.rowcount == 1  # type: ignore[attr-defined]

    async def complete_bound(
        self, *, operation: str, status: int, body: str, payment_id: int, refund_id: int | None
    ) -> None:
        """Store the answer on every in-flight key bound to this payment (or refund).

        Whoever finishes the row (the request, a same-key retry, the reconciler or a
        webhook) stores the answer, so it does not depend on holding the lease.
        """
        condition = (
            IdempotencyKey.refund_id == refund_id
            if refund_id is not None
            else IdempotencyKey.payment_id == payment_id
        )
        await self.session.execute(
            update(IdempotencyKey)
            .where(
                IdempotencyKey.operation == operation,
                condition,
                IdempotencyKey.state == IdempotencyState.IN_PROGRESS.value,
            )
            .values(
                state=IdempotencyState.COMPLETED.value,
                response_status=status,
                response_body=body,
                lease_token=None,
                locked_until=None,
            )
        )

    async def stored_answer(self, key_id: int) -> tuple[int, str] | None:
        """(status, body) stored on a COMPLETED key, else None."""
        row = (
            await self.session.execute(
                select(IdempotencyKey.response_status, IdempotencyKey.response_body).where(
                    IdempotencyKey.id == key_id,
                    IdempotencyKey.state == IdempotencyState.COMPLETED.value,
                )
            )
        ).one_or_none()
        if row is None or row.response_status is None or row.response_body is None:
            return None
        return row.response_status, row.response_body

    async def end_lease(self, key_id: int, token: str) -> None:
        """Let the next same-key retry resume at once (the key stays bound, nothing lost)."""
        await self.session.execute(
            update(IdempotencyKey)
            .where(IdempotencyKey.id == key_id, IdempotencyKey.lease_token == token)
            .values(locked_until=func.now())
        )

    async def release(self, key_id: int, token: str) -> None:
        """Forget an in-flight key whose request changed nothing, so it can be retried.

        A key bound to a payment or refund is kept whatever the caller believes: when
        the answer to a committed statement is lost (a dropped connection), the row
        exists, and a retry must resume it.
        """
        await self.session.execute(
            delete(IdempotencyKey).where(
                IdempotencyKey.id == key_id,
                IdempotencyKey.lease_token == token,
                IdempotencyKey.payment_id.is_(None),
                IdempotencyKey.refund_id.is_(None),
            )
        )

    async def purge_expired(self) -> int:
        result = await self.session.execute(
            delete(IdempotencyKey).where(IdempotencyKey.expires_at < func.now())
        )
        return result.rowcount or 0  # type: ignore[attr-defined]
