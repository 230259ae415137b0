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
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    DateTime,
    Integer,
    Interval,
    String,
    Table,
    any_,
    bindparam,
    case,
    column,
    func,
    insert,
    literal_column,
    select,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.sql.elements import BindParameter, ColumnClause
from sqlalchemy.types import TypeEngine

from payment_service.models import OutboxMessage
from payment_service.models.enums import OutboxStatus
from payment_service.tracing import current_traceparent

LAST_ERROR_MAX_CHARS = 500


def _status(status: OutboxStatus) -> Any:
    """A status as an SQL literal, not a parameter: `status = 'PENDING'` then matches the
    partial index's predicate in every plan, generic (prepared) ones included."""
    return literal_column(f"'{status.value}'", String())


_PENDING = _status(OutboxStatus.PENDING)
_OUTBOX = cast(Table, OutboxMessage.__table__)
_CLAIMED_COLUMNS = (
    "id",
    "message_type",
    "payment_id",
    "payload",
    "attempts",
    "next_attempt_at",
    "event_id",
    "traceparent",
)


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
class Claim:
    """What one claim statement returned: the leased messages, oldest first, and how many
    rows were PENDING (leased or not) when it ran, for the `outbox_pending` gauge."""

    messages: list[ClaimedMessage]
    pending: int


@dataclass(frozen=True, slots=True)
class FailedAttempt:
    """A delivery that did not end in a 2xx: retry after `retry_in_seconds` (or give up)."""

    message: ClaimedMessage
    error: str
    retry_in_seconds: float


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


# -- statements, built once at import (bound parameters only) ---------------------


def _build_enqueue() -> Any:
    return (
        insert(_OUTBOX)
        .values(
            message_type=bindparam("message_type", type_=String()),
            payment_id=bindparam("payment_id", type_=BigInteger()),
            payload=bindparam("payload", type_=JSONB()),
            traceparent=bindparam("traceparent", type_=String()),
        )
        .inline()
    )  # no RETURNING id: nobody reads it


def _build_claim() -> Any:
    """WITH due AS (SELECT id ... FOR UPDATE SKIP LOCKED), claimed AS (UPDATE ... RETURNING)
    SELECT pending.n, claimed.* FROM (SELECT count(*) ... PENDING) pending LEFT JOIN claimed

    The outer join yields one row even when nothing was due, so the gauge's count
    comes with every poll without a second statement. The whole statement sees one
    snapshot: the count is taken as the claim starts (claiming keeps rows PENDING).
    """
    t = _OUTBOX
    due = (
        select(t.c.id)
        .where(t.c.status == _PENDING, t.c.next_attempt_at <= func.now())
        .order_by(t.c.next_attempt_at, t.c.id)
        .limit(bindparam("limit", type_=Integer()))
        .with_for_update(skip_locked=True)
        .cte("due")
    )
    claimed = (
        update(t)
        .where(t.c.id.in_(select(due.c.id)))
        .values(next_attempt_at=func.now() + bindparam("lease", type_=Interval()))
        .returning(*(t.c[name] for name in _CLAIMED_COLUMNS))
        .cte("claimed")
    )
    pending = _build_count().subquery("pending")
    return select(pending.c.n, *(claimed.c[name] for name in _CLAIMED_COLUMNS)).select_from(
        pending.outerjoin(claimed, true())
    )


def _build_count() -> Any:
    """How many messages are PENDING (the `outbox_pending` gauge), leased or not."""
    return select(func.count().label("n")).select_from(_OUTBOX).where(_OUTBOX.c.status == _PENDING)


def _build_mark_delivered() -> Any:
    t = _OUTBOX
    return (
        update(t)
        .where(t.c.id == any_(bindparam("ids", type_=ARRAY(BigInteger()))), t.c.status == _PENDING)
        .values(
            status=_status(OutboxStatus.DELIVERED),
            delivered_at=func.now(),
            attempts=t.c.attempts + 1,
        )
    )


def _leased_rows(*extra: tuple[str, TypeEngine[Any]]) -> Any:
    """unnest(:ids, :leases, ...) AS v(id, lease_until, ...): one row per claimed message."""
    columns: list[ColumnClause[Any]] = [
        column("id", BigInteger()),
        column("lease_until", DateTime(timezone=True)),
    ]
    arrays: list[BindParameter[Any]] = [
        bindparam("ids", type_=ARRAY(BigInteger())),
        bindparam("leases", type_=ARRAY(DateTime(timezone=True))),
    ]
    for name, type_ in extra:
        columns.append(column(name, type_))
        arrays.append(bindparam(f"{name}s", type_=ARRAY(type_)))
    return func.unnest(*arrays).table_valued(*columns).render_derived(name="v")


def _still_leased(v: Any) -> tuple[Any, ...]:
    """The fence: the row is still PENDING and carries the lease its claim returned."""
    t = _OUTBOX
    return (t.c.id == v.c.id, t.c.status == _PENDING, t.c.next_attempt_at == v.c.lease_until)


def _build_mark_failed() -> Any:
    t = _OUTBOX
    v = _leased_rows(("error", String()), ("retry_in", Interval()))
    attempts = t.c.attempts + 1
    return (
        update(t)
        .where(*_still_leased(v))
        .values(
            attempts=attempts,
            last_error=v.c.error,
            next_attempt_at=func.now() + v.c.retry_in,
            status=case(
                (
                    attempts >= bindparam("max_attempts", type_=Integer()),
                    _status(OutboxStatus.FAILED),
                ),
                else_=_PENDING,
            ),
        )
        .returning(t.c.id, t.c.status)
    )


def _build_release() -> Any:
    t = _OUTBOX
    v = _leased_rows()
    return update(t).where(*_still_leased(v)).values(next_attempt_at=func.now()).returning(t.c.id)


_ENQUEUE = _build_enqueue()
_CLAIM = _build_claim()
_COUNT_PENDING = _build_count()
_MARK_DELIVERED = _build_mark_delivered()
_MARK_FAILED = _build_mark_failed()
_RELEASE = _build_release()


def _leases(messages: Sequence[ClaimedMessage]) -> dict[str, list[Any]]:
    return {
        "ids": [message.id for message in messages],
        "leases": [message.lease_until for message in messages],
    }


class OutboxRepository:
    """Outbox statements on a session (inside the caller's transaction) or on a connection.

    Every method is one statement, so a dispatcher can run them on an AUTOCOMMIT
    connection: each is atomic on its own and needs no BEGIN/COMMIT round trips.
    """

    def __init__(self, session: AsyncSession | AsyncConnection) -> None:
        self.session = session

    async def enqueue(self, message_type: str, payment_id: int, payload: dict[str, Any]) -> None:
        """Add a message in the caller's transaction: it commits or vanishes with the payment.

        The current trace context is stored with it, so the delivery (later, in another
        task or process) is traced as part of the charge or refund that caused it.
        """
        await self.session.execute(
            _ENQUEUE,
            {
                "message_type": message_type,
                "payment_id": payment_id,
                "payload": payload,
                "traceparent": current_traceparent(),
            },
        )

    async def claim(self, limit: int, lease_seconds: float) -> Claim:
        """Lease up to `limit` due PENDING rows, most overdue first, and count the PENDING ones.

        Rows other claimers hold are skipped (`FOR UPDATE SKIP LOCKED`), never waited
        for. The row locks only guard the statement itself; the lease
        (`next_attempt_at = now() + lease_seconds`) guards the delivery, so in a
        transaction, commit right after.
        """
        params = {"limit": limit, "lease": timedelta(seconds=lease_seconds)}
        rows = (await self.session.execute(_CLAIM, params)).all()
        pending = int(rows[0][0]) if rows else 0
        claimed = [ClaimedMessage(*row[1:]) for row in rows if row[1] is not None]
        claimed.sort(key=lambda message: message.id)
        return Claim(claimed, pending)

    async def claim_due(self, limit: int, lease_seconds: float) -> list[ClaimedMessage]:
        """`claim`'s messages alone."""
        return (await self.claim(limit, lease_seconds)).messages

    async def count_pending(self) -> int:
        """PENDING rows, leased or not (the `outbox_pending` gauge)."""
        return int((await self.session.execute(_COUNT_PENDING)).scalar_one())

    async def mark_delivered(self, *messages: ClaimedMessage) -> int:
        """Record 2xx answers in one statement: DELIVERED with their time.

        Applies even if a lease ran out meanwhile (the message did arrive).
        Returns how many rows changed.
        """
        if not messages:
            return 0
        ids = [message.id for message in messages]
        result = await self.session.execute(_MARK_DELIVERED, {"ids": ids})
        return int(result.rowcount)  # type: ignore[attr-defined]

    async def mark_failed_attempts(
        self, failures: Sequence[FailedAttempt], *, max_attempts: int
    ) -> dict[int, str]:
        """Count failed attempts in one statement: each retried after its own delay, or
        FAILED at `max_attempts`.

        Returns the new status of each row still leased; a row whose lease was lost
        (another dispatcher has it now, so its bookkeeping wins) is left out.
        """
        if not failures:
            return {}
        params = {
            **_leases([failure.message for failure in failures]),
            "errors": [failure.error[:LAST_ERROR_MAX_CHARS] for failure in failures],
            "retry_ins": [timedelta(seconds=failure.retry_in_seconds) for failure in failures],
            "max_attempts": max_attempts,
        }
        rows = (await self.session.execute(_MARK_FAILED, params)).all()
        return {row_id: status for row_id, status in rows}

    async def mark_failed_attempt(
        self, message: ClaimedMessage, error: str, *, retry_in_seconds: float, max_attempts: int
    ) -> str | None:
        """`mark_failed_attempts` for one message: its new status, or None when the lease
        was lost."""
        statuses = await self.mark_failed_attempts(
            [FailedAttempt(message, error, retry_in_seconds)], max_attempts=max_attempts
        )
        return statuses.get(message.id)

    async def release_all(self, messages: Sequence[ClaimedMessage]) -> set[int]:
        """Hand back claimed rows that were not attempted: due again at once, no attempt
        counted. Returns the ids released (those whose lease was not lost)."""
        if not messages:
            return set()
        rows = await self.session.execute(_RELEASE, _leases(messages))
        return set(rows.scalars())

    async def release(self, message: ClaimedMessage) -> bool:
        """`release_all` for one message: whether it was still leased."""
        return message.id in await self.release_all([message])

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
