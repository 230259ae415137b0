"""Checking the ledger against the payments (`payment-service reconcile`), and the
per-driver settlement file (`payment-service settlement --date`).

Ledger checks, each a difference when it fails:
- every journal's lines sum to zero (the trigger already refuses others at commit);
- every payment the service charged (it has a gateway idempotency key) that was
  captured (SUCCESS, PARTIALLY_REFUNDED, REFUNDED) has exactly one CAPTURE journal for
  its amount, and one that was not (PROCESSING, PENDING, FAILED) has none;
- the REFUND journals of a payment sum to its `refunded_amount`, one per SUCCEEDED refund.
Seeded history (no gateway key) predates the ledger and is not checked.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import TextIO

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from payment_service.repositories.ledger import EARNING_FIGURES, LedgerRepository


@dataclass(frozen=True, slots=True)
class LedgerDifference:
    payment_id: int
    status: str
    problem: str

    def __str__(self) -> str:
        return f"payment {self.payment_id} ({self.status}): ledger: {self.problem}"


_UNBALANCED = """
SELECT j.payment_id, p.status, j.id AS journal_id, coalesce(sum(l.amount), 0) AS total
  FROM ledger_journals j JOIN payments p ON p.id = j.payment_id
  LEFT JOIN ledger_lines l ON l.journal_id = j.id
 GROUP BY j.id, j.payment_id, p.status
HAVING coalesce(sum(l.amount), 0) <> 0 OR count(l.id) < 2
"""

_PAYMENTS_VS_JOURNALS = """
SELECT p.id, p.status, p.amount, p.refunded_amount,
       (SELECT count(*) FROM ledger_journals j
         WHERE j.payment_id = p.id AND j.entry_type = 'CAPTURE') AS captures,
       (SELECT coalesce(sum(j.amount), 0) FROM ledger_journals j
         WHERE j.payment_id = p.id AND j.entry_type = 'CAPTURE') AS captured,
       (SELECT coalesce(sum(j.amount), 0) FROM ledger_journals j
         WHERE j.payment_id = p.id AND j.entry_type = 'REFUND') AS refunded,
       (SELECT count(*) FROM refunds r
         WHERE r.payment_id = p.id AND r.status = 'SUCCEEDED') AS succeeded_refunds,
       (SELECT count(*) FROM ledger_journals j
         WHERE j.payment_id = p.id AND j.entry_type = 'REFUND') AS refund_journals
  FROM payments p
 WHERE p.gateway_idempotency_key IS NOT NULL AND p.amount > 0
 ORDER BY p.id
"""

CAPTURED = ("SUCCESS", "PARTIALLY_REFUNDED", "REFUNDED")


async def ledger_differences(session: AsyncSession) -> tuple[int, list[LedgerDifference]]:
    """(payments checked, differences) between the ledger and the payments."""
    differences: list[LedgerDifference] = []
    for row in (await session.execute(text(_UNBALANCED))).mappings():
        differences.append(
            LedgerDifference(
                row["payment_id"],
                row["status"],
                f"journal {row['journal_id']} does not balance ({row['total']})",
            )
        )
    checked = 0
    for row in (await session.execute(text(_PAYMENTS_VS_JOURNALS))).mappings():
        checked += 1

        def differ(problem: str, payment_id: int = row["id"], status: str = row["status"]) -> None:
            differences.append(LedgerDifference(payment_id, status, problem))

        if row["status"] in CAPTURED:
            if row["captures"] != 1 or row["captured"] != row["amount"]:
                differ(
                    f"{row['captures']} capture journals for {row['captured']}; "
                    f"the payment captured {row['amount']}"
                )
            if row["refunded"] != row["refunded_amount"]:
                differ(
                    f"refund journals sum to {row['refunded']}; "
                    f"the payment refunded {row['refunded_amount']}"
                )
            if row["refund_journals"] != row["succeeded_refunds"]:
                differ(
                    f"{row['refund_journals']} refund journals for "
                    f"{row['succeeded_refunds']} succeeded refunds"
                )
        elif row["captures"] or row["refund_journals"]:
            differ("journals for a payment that was never captured")
    return checked, differences


SETTLEMENT_COLUMNS = ("driver_id", "date", *EARNING_FIGURES)


@dataclass(frozen=True, slots=True)
class Settlement:
    rows: list[dict[str, object]]
    totals: dict[str, Decimal]


async def settlement(session: AsyncSession, day: date) -> Settlement:
    """One row per driver with journals on `day` (UTC), from the ledger alone."""
    repo = LedgerRepository(session)
    rows: list[dict[str, object]] = []
    totals = {name: Decimal("0.00") for name in EARNING_FIGURES}
    for driver_id in await repo.drivers_on(day):
        [figures] = await repo.driver_days(driver_id, day_from=day, day_to=day)
        row: dict[str, object] = {"driver_id": driver_id, "date": day.isoformat()}
        for name in EARNING_FIGURES:
            value = Decimal(figures[name])
            row[name] = value
            totals[name] += value
        rows.append(row)
    return Settlement(rows, totals)


def write_settlement_csv(result: Settlement, out: TextIO) -> None:
    """The CSV: a header, one row per driver, a final TOTAL row (money with two decimals)."""
    writer = csv.writer(out)
    writer.writerow(SETTLEMENT_COLUMNS)
    for row in result.rows:
        writer.writerow([_cell(row[column]) for column in SETTLEMENT_COLUMNS])
    writer.writerow(["TOTAL", ""] + [_cell(result.totals[name]) for name in EARNING_FIGURES])


def _cell(value: object) -> str:
    return f"{value:.2f}" if isinstance(value, Decimal) else str(value)
