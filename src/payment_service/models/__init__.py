"""ORM models; importing this package registers every table on `Base.metadata`."""

from payment_service.models.api_key import ApiClient, ApiKey
from payment_service.models.base import Base
from payment_service.models.enums import (
    IdempotencyState,
    OutboxStatus,
    PaymentKind,
    PaymentMethod,
    PaymentStatus,
    RefundStatus,
)
from payment_service.models.idempotency import IdempotencyKey
from payment_service.models.ledger import LedgerJournal, LedgerLine
from payment_service.models.outbox import OutboxMessage
from payment_service.models.payment import (
    Payment,
    PaymentEvent,
    Receipt,
    Refund,
    WebhookEvent,
)

__all__ = [
    "ApiClient",
    "ApiKey",
    "Base",
    "IdempotencyKey",
    "IdempotencyState",
    "LedgerJournal",
    "LedgerLine",
    "OutboxMessage",
    "OutboxStatus",
    "Payment",
    "PaymentEvent",
    "PaymentKind",
    "PaymentMethod",
    "PaymentStatus",
    "Receipt",
    "Refund",
    "RefundStatus",
    "WebhookEvent",
]
