"""`payment-service reconcile`: our records against the processor's, payment by payment.

For every payment the processor was asked about (it has a gateway idempotency key; cash
and seeded rows have none), the money the processor captured and refunded must equal
what we recorded: the amount when the payment is SUCCESS or refunded since (0 when it
FAILED), and `refunded_amount`. A payment captured more than once, money captured for a
payment we still hold as PROCESSING/PENDING, and a capture the processor lacks are all
differences. Then our ledger is checked against our payments (every captured payment
has its journal, refund journals sum to what was refunded, every journal balances;
`services/ledger_audit.py`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import select

from payment_service.clients.gateway import PaymentGateway
from payment_service.db import SessionFactory
from payment_service.models import Payment
from payment_service.models.enums import PaymentMethod, PaymentStatus
from payment_service.services.charge import charge_attempt
from payment_service.services.ledger_audit import ledger_differences

CAPTURED_STATUSES = frozenset(
    {
        PaymentStatus.SUCCESS.value,
        PaymentStatus.PARTIALLY_REFUNDED.value,
        PaymentStatus.REFUNDED.value,
    }
)


@dataclass(frozen=True, slots=True)
class Difference:
    payment_id: int
    status: str
    problem: str

    def __str__(self) -> str:
        return f"payment {self.payment_id} ({self.status}): {self.problem}"


@dataclass(frozen=True, slots=True)
class ReconciliationReport:
    compared: int
    differences: list[Difference]
    without_ledger: bool = False
    ledger_checked: int = 0


async def _payments(session_factory: SessionFactory, batch: int = 500) -> AsyncIterator[Payment]:
    last_id = 0
    while True:
        async with session_factory() as session:
            rows = (
                await session.execute(
                    select(Payment)
                    .where(
                        Payment.id > last_id,
                        Payment.gateway_idempotency_key.is_not(None),
                        Payment.method != PaymentMethod.CASH.value,
                    )
                    .order_by(Payment.id)
                    .limit(batch)
                )
            ).scalars()
            page = list(rows)
        if not page:
            return
        for payment in page:
            yield payment
        last_id = page[-1].id


async def _nothing() -> AsyncIterator[Payment]:
    """The simulator keeps no record to compare with."""
    return
    yield  # pragma: no cover


async def reconcile(
    session_factory: SessionFactory, gateway: PaymentGateway
) -> ReconciliationReport:
    """Compare every processor-backed payment with the processor's own record."""
    differences: list[Difference] = []
    compared = 0
    records_seen = 0
    without_ledger = gateway.name == "simulator"
    async for payment in _nothing() if without_ledger else _payments(session_factory):
        compared += 1
        record = await gateway.processor_record(charge_attempt(payment))
        expected = payment.amount if payment.status in CAPTURED_STATUSES else Decimal("0")

        def differ(problem: str, payment: Payment = payment) -> None:
            differences.append(Difference(payment.id, payment.status, problem))

        if record is None:
            if expected > 0:
                differ(f"we recorded {expected} captured; the processor has no record of it")
            continue
        records_seen += 1
        if payment.status in (PaymentStatus.PROCESSING.value, PaymentStatus.PENDING.value):
            if record.captured > 0:
                differ(f"the processor captured {record.captured}; we still hold it unsettled")
            continue
        if record.captures > 1:
            differ(f"the processor captured {record.captures} times")
        if record.captured != expected:
            differ(f"the processor captured {record.captured}; we recorded {expected}")
        if record.refunded != payment.refunded_amount:
            differ(
                f"the processor refunded {record.refunded}; we recorded {payment.refunded_amount}"
            )
    # Our own ledger against our payments (services/ledger_audit.py), whatever the gateway.
    async with session_factory() as session:
        ledger_checked, ledger_found = await ledger_differences(session)
    differences.extend(
        Difference(d.payment_id, d.status, f"ledger: {d.problem}") for d in ledger_found
    )
    return ReconciliationReport(
        compared, differences, without_ledger=without_ledger, ledger_checked=ledger_checked
    )
