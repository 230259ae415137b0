"""Reading payments."""

from __future__ import annotations

from typing import Any

from payment_service.db import RawReads
from payment_service.errors import NotFoundError
from payment_service.repositories.payment import PaymentQuery, PaymentReads


class PaymentNotFoundError(NotFoundError):
    type = "payment-not-found"
    title = "Payment Not Found"

    def __init__(self, payment_id: int) -> None:
        super().__init__(f"Payment {payment_id} does not exist.", payment_id=payment_id)


async def read_payment(reads: RawReads, payment_id: int) -> Any:
    """The payment's row for GET /v1/payments/{id} (one statement, no ORM object)."""
    row = await PaymentReads(reads).by_id(payment_id)
    if row is None:
        raise PaymentNotFoundError(payment_id)
    return row


async def search_payments(reads: RawReads, query: PaymentQuery) -> tuple[list[Any], int]:
    """A page of rows and the total for GET /v1/payments (one statement)."""
    return await PaymentReads(reads).search(query)
