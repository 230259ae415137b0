"""Reading payments."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from payment_service.db import RawReads
from payment_service.errors import NotFoundError
from payment_service.models import Payment
from payment_service.repositories.payment import PaymentQuery, PaymentReads, PaymentRepository


class PaymentNotFoundError(NotFoundError):
    type = "payment-not-found"
    title = "Payment Not Found"

    def __init__(self, payment_id: int) -> None:
        super().__init__(f"Payment {payment_id} does not exist.", payment_id=payment_id)


async def get_payment(session: AsyncSession, payment_id: int) -> Payment:
    payment = await PaymentRepository(session).read(payment_id)
    if payment is None:
        raise PaymentNotFoundError(payment_id)
    return payment


async def read_payment(reads: RawReads, payment_id: int) -> Any:
    """The payment's row for GET /v1/payments/{id} (one statement, no ORM object)."""
    row = await PaymentReads(reads).by_id(payment_id)
    if row is None:
        raise PaymentNotFoundError(payment_id)
    return row


async def search_payments(reads: RawReads, query: PaymentQuery) -> tuple[list[Any], int]:
    """A page of rows and the total for GET /v1/payments (one statement)."""
    return await PaymentReads(reads).search(query)


async def list_payments(
    session: AsyncSession, query: PaymentQuery
) -> tuple[Sequence[Payment], int]:
    return await PaymentRepository(session).search(query)
