"""Reading the ledger: a trip's journals with their lines, a driver's earnings by day."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from payment_service.models import LedgerJournal, LedgerLine

ZERO = Decimal("0.00")

# One row per UTC day of a driver's journals; every figure from the journals and lines.
_EARNINGS_BY_DAY = """
SELECT (j.created_at AT TIME ZONE 'UTC')::date AS day,
       coalesce(sum(j.amount) FILTER (
           WHERE j.entry_type = 'CAPTURE' AND j.payment_kind IN ('FARE', 'CANCELLATION_FEE')
       ), 0) AS gross_fares,
       coalesce(sum(j.amount) FILTER (
           WHERE j.entry_type = 'CAPTURE' AND j.payment_kind = 'ADJUSTMENT'), 0) AS adjustments,
       coalesce(sum(j.amount) FILTER (
           WHERE j.entry_type = 'CAPTURE' AND j.payment_kind = 'TIP'), 0) AS tips,
       coalesce(sum(j.amount) FILTER (WHERE j.entry_type = 'REFUND'), 0) AS refunds,
       coalesce(-sum(l.commission), 0) AS commission,
       coalesce(-sum(l.driver), 0) AS net,
       count(*) AS entries
  FROM ledger_journals j
  JOIN LATERAL (
        SELECT coalesce(sum(amount) FILTER (WHERE account = 'platform:commission'), 0)
                   AS commission,
               coalesce(sum(amount) FILTER (WHERE account = :driver_account), 0) AS driver
          FROM ledger_lines WHERE journal_id = j.id
       ) l ON true
 WHERE j.driver_id = :driver_id
   AND (CAST(:day_from AS date) IS NULL
        OR (j.created_at AT TIME ZONE 'UTC')::date >= CAST(:day_from AS date))
   AND (CAST(:day_to AS date) IS NULL
        OR (j.created_at AT TIME ZONE 'UTC')::date <= CAST(:day_to AS date))
 GROUP BY 1
 ORDER BY 1
"""

EARNING_FIGURES = ("gross_fares", "adjustments", "tips", "refunds", "commission", "net")


@dataclass(frozen=True, slots=True)
class JournalWithLines:
    journal: LedgerJournal
    lines: Sequence[LedgerLine]


class LedgerRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def trip_journals(
        self, trip_id: int, *, limit: int, offset: int
    ) -> tuple[list[JournalWithLines], int]:
        total = (
            await self.session.scalar(
                select(func.count())
                .select_from(LedgerJournal)
                .where(LedgerJournal.trip_id == trip_id)
            )
            or 0
        )
        journals = (
            (
                await self.session.execute(
                    select(LedgerJournal)
                    .where(LedgerJournal.trip_id == trip_id)
                    .order_by(LedgerJournal.id)
                    .limit(limit)
                    .offset(offset)
                )
            )
            .scalars()
            .all()
        )
        by_journal: dict[int, list[LedgerLine]] = {j.id: [] for j in journals}
        if journals:
            lines = (
                await self.session.execute(
                    select(LedgerLine)
                    .where(LedgerLine.journal_id.in_(list(by_journal)))
                    .order_by(LedgerLine.id)
                )
            ).scalars()
            for line in lines:
                by_journal[line.journal_id].append(line)
        return [JournalWithLines(j, by_journal[j.id]) for j in journals], total

    async def driver_days(
        self, driver_id: int, *, day_from: date | None, day_to: date | None
    ) -> list[dict[str, Any]]:
        rows = await self.session.execute(
            text(_EARNINGS_BY_DAY),
            {
                "driver_id": driver_id,
                "driver_account": f"driver:{driver_id}",
                "day_from": day_from,
                "day_to": day_to,
            },
        )
        return [dict(row) for row in rows.mappings()]

    async def drivers_on(self, day: date) -> list[int]:
        """Drivers with journals on a UTC day (for the settlement file)."""
        rows = await self.session.execute(
            text(
                "SELECT DISTINCT driver_id FROM ledger_journals "
                "WHERE driver_id IS NOT NULL "
                "AND (created_at AT TIME ZONE 'UTC')::date = :day ORDER BY 1"
            ),
            {"day": day},
        )
        return [row[0] for row in rows]
