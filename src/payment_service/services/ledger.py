"""Posting money movements to the double-entry ledger, in the transaction that records them.

`services/transitions.py` calls `post_capture` when a payment reaches SUCCESS and
`post_refund` when a refund is SUCCEEDED, inside the same transaction as the state
change, so a movement and its journal commit or vanish together.

Lines (debit > 0, credit < 0; every journal sums to zero, the database checks it):

    capture of A      source +A     driver:<id> -(A - C)     platform:commission -C
    refund of r       source -r     driver:<id> +(r - c)     platform:commission +c

`source` is `processor:clearing` (the processor holds the money) or, for CASH,
`driver_cash:<id>` (the driver collected it and owes us the commission).

Rounding rule: the capture's commission is C = round-half-up(A x rate) to cents, where
`rate` is the payment's `commission_rate` (PLATFORM_COMMISSION_RATE when it was
charged, 0 for tips); the driver gets A - C. Refunds reverse the commission
cumulatively: after refunds totalling R (this one included) the commission reversed is
round-half-up(C x R / A), and this refund's share c is that minus what earlier refunds
reversed; the driver's reversal is r - c. So each journal balances to the cent, and a
full refund reverses exactly C and exactly A - C: totals never drift.

Payments with no capture journal (seeded history, moved before the ledger existed)
get no refund journal either: the ledger only speaks for money it saw captured.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from payment_service.models import LedgerJournal, LedgerLine, Payment, Refund
from payment_service.models.enums import PaymentMethod
from payment_service.observability import LEDGER_JOURNALS

log = logging.getLogger(__name__)

CENT = Decimal("0.01")
COMMISSION_ACCOUNT = "platform:commission"
CLEARING_ACCOUNT = "processor:clearing"
CAPTURE = "CAPTURE"
REFUND = "REFUND"


def cents(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


def driver_account(driver_id: int | None) -> str:
    return f"driver:{driver_id if driver_id is not None else 'unknown'}"


def source_account(payment: Payment) -> str:
    if payment.method == PaymentMethod.CASH.value:
        return f"driver_cash:{payment.driver_id if payment.driver_id is not None else 'unknown'}"
    return CLEARING_ACCOUNT


def capture_split(amount: Decimal, rate: Decimal) -> tuple[Decimal, Decimal]:
    """(commission, driver share) of a capture: commission rounded half-up to cents."""
    commission = cents(amount * rate)
    return commission, amount - commission


def refund_split(
    *,
    captured: Decimal,
    commission: Decimal,
    refunded_before: Decimal,
    commission_reversed_before: Decimal,
    amount: Decimal,
) -> tuple[Decimal, Decimal]:
    """(commission reversed, driver share reversed) by a refund of `amount` (see the module)."""
    cumulative = cents(commission * (refunded_before + amount) / captured)
    reversed_now = cumulative - commission_reversed_before
    return reversed_now, amount - reversed_now


@dataclass(frozen=True, slots=True)
class JournalDraft:
    """A journal before it is written: its entry, amount and its non-zero lines."""

    entry_type: str
    amount: Decimal
    description: str | None
    lines: tuple[tuple[str, Decimal], ...]

    @staticmethod
    def of(
        entry_type: str, amount: Decimal, description: str | None, lines: list[tuple[str, Decimal]]
    ) -> JournalDraft:
        kept = tuple((account, value) for account, value in lines if value != 0)
        return JournalDraft(entry_type, amount, description, kept)


async def _journal(
    session: AsyncSession, payment: Payment, draft: JournalDraft, *, refund_id: int | None
) -> int | None:
    """Insert the journal and its lines; None if this movement was already posted."""
    journal_id = (
        await session.execute(
            insert(LedgerJournal)
            .values(
                entry_type=draft.entry_type,
                payment_kind=payment.kind,
                payment_id=payment.id,
                refund_id=refund_id,
                trip_id=payment.trip_id,
                driver_id=payment.driver_id,
                rider_id=payment.rider_id,
                amount=draft.amount,
                description=draft.description,
            )
            .on_conflict_do_nothing()
            .returning(LedgerJournal.id)
        )
    ).scalar_one_or_none()
    if journal_id is None:
        return None
    LEDGER_JOURNALS.labels(entry_type=draft.entry_type).inc()
    rows = [
        {"journal_id": journal_id, "account": account, "amount": value}
        for account, value in draft.lines
    ]
    await session.execute(insert(LedgerLine), rows)
    return journal_id


def capture_journal(payment: Payment) -> JournalDraft | None:
    """The journal a payment's capture posts (None for a zero amount: nothing moved)."""
    if payment.amount <= 0:
        return None
    commission, driver = capture_split(payment.amount, payment.commission_rate)
    return JournalDraft.of(
        CAPTURE,
        payment.amount,
        f"{payment.kind.lower()} captured",
        [
            (source_account(payment), payment.amount),
            (driver_account(payment.driver_id), -driver),
            (COMMISSION_ACCOUNT, -commission),
        ],
    )


async def post_capture(session: AsyncSession, payment: Payment) -> int | None:
    """The journal of a payment's capture (called when it reaches SUCCESS)."""
    draft = capture_journal(payment)
    return None if draft is None else await _journal(session, payment, draft, refund_id=None)


async def post_refund(session: AsyncSession, payment: Payment, refund: Refund) -> int | None:
    """The journal of a confirmed refund, reversing the capture in its proportions.

    The caller holds the payment's row lock, so refunds of one payment post in turn.
    """
    capture = (
        await session.execute(
            select(LedgerJournal.id, LedgerJournal.amount).where(
                LedgerJournal.payment_id == payment.id, LedgerJournal.entry_type == CAPTURE
            )
        )
    ).one_or_none()
    if capture is None:
        log.info(
            "refund of a payment the ledger never saw captured: not posted",
            extra={"payment_id": payment.id, "refund_id": refund.id},
        )
        return None
    commission = -(
        await session.scalar(
            select(func.coalesce(func.sum(LedgerLine.amount), 0)).where(
                LedgerLine.journal_id == capture.id, LedgerLine.account == COMMISSION_ACCOUNT
            )
        )
        or Decimal("0")
    )
    earlier = (
        await session.execute(
            select(
                func.coalesce(func.sum(LedgerJournal.amount), 0).label("refunded"),
            ).where(LedgerJournal.payment_id == payment.id, LedgerJournal.entry_type == REFUND)
        )
    ).one()
    reversed_before = await session.scalar(
        select(func.coalesce(func.sum(LedgerLine.amount), 0))
        .join(LedgerJournal, LedgerJournal.id == LedgerLine.journal_id)
        .where(
            LedgerJournal.payment_id == payment.id,
            LedgerJournal.entry_type == REFUND,
            LedgerLine.account == COMMISSION_ACCOUNT,
        )
    )
    commission_back, driver_back = refund_split(
        captured=capture.amount,
        commission=Decimal(commission),
        refunded_before=Decimal(earlier.refunded),
        commission_reversed_before=Decimal(reversed_before or 0),
        amount=refund.amount,
    )
    draft = JournalDraft.of(
        REFUND,
        refund.amount,
        refund.reason,
        [
            (source_account(payment), -refund.amount),
            (driver_account(payment.driver_id), driver_back),
            (COMMISSION_ACCOUNT, commission_back),
        ],
    )
    return await _journal(session, payment, draft, refund_id=refund.id)
