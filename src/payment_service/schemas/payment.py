"""Payment shapes: the seed's fields first, then what this service adds."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from payment_service.jsonutil import utc_timestamp
from payment_service.models import Payment
from payment_service.models.enums import PaymentKind, PaymentMethod, PaymentStatus
from payment_service.schemas.common import (
    METADATA_MAX_KEY_LENGTH,
    METADATA_MAX_KEYS,
    METADATA_MAX_VALUE_LENGTH,
    IdempotencyKeyStr,
    MetadataKey,
    MetadataValue,
    Money,
)

MAX_ID = 2**63 - 1  # ids are BIGINT: larger values are a 422, not a database error


class PaymentRead(BaseModel):
    payment_id: int
    trip_id: int
    rider_id: int | None
    driver_id: int | None
    amount: Money
    currency: str
    method: PaymentMethod
    status: PaymentStatus
    refunded_amount: Money
    reference: str
    created_at: datetime
    updated_at: datetime
    kind: PaymentKind = Field(
        PaymentKind.FARE, description="FARE, TIP, ADJUSTMENT or CANCELLATION_FEE"
    )
    parent_payment_id: int | None = Field(
        None, description="The fare payment a TIP or ADJUSTMENT adds to"
    )


def payment_dict(payment: Payment) -> dict[str, Any]:
    """A payment as its JSON response object (Decimals kept exact)."""
    return {
        "payment_id": payment.id,
        "trip_id": payment.trip_id,
        "rider_id": payment.rider_id,
        "driver_id": payment.driver_id,
        "amount": payment.amount,
        "currency": payment.currency,
        "method": payment.method,
        "status": payment.status,
        "refunded_amount": payment.refunded_amount,
        "reference": payment.reference,
        "created_at": payment.created_at,
        "updated_at": payment.updated_at,
        "kind": payment.kind or PaymentKind.FARE.value,
        "parent_payment_id": payment.parent_payment_id,
    }


def payment_row_dict(row: Mapping[str, Any]) -> dict[str, Any]:
    """`payment_dict` of a row read without the ORM (`PaymentReads`): the same JSON, with
    the times already as the strings `jsonutil.dumps` writes (no `default` hook per time)."""
    return {
        "payment_id": row["id"],
        "trip_id": row["trip_id"],
        "rider_id": row["rider_id"],
        "driver_id": row["driver_id"],
        "amount": row["amount"],
        "currency": row["currency"],
        "method": row["method"],
        "status": row["status"],
        "refunded_amount": row["refunded_amount"],
        "reference": row["reference"],
        "created_at": utc_timestamp(row["created_at"]),
        "updated_at": utc_timestamp(row["updated_at"]),
        "kind": row["kind"] or PaymentKind.FARE.value,
        "parent_payment_id": row["parent_payment_id"],
    }


class PaymentList(BaseModel):
    payments: list[PaymentRead]
    count: int = Field(description="Rows in this page")
    total: int = Field(description="Rows matching the filters")
    limit: int
    offset: int


class PaymentFilters(BaseModel):
    """Query filters of GET /v1/payments; a bad value is a 422, never an empty list."""

    model_config = ConfigDict(extra="forbid")

    trip_id: int | None = Field(None, gt=0, le=MAX_ID)
    status: PaymentStatus | None = None
    method: PaymentMethod | None = None
    rider_id: int | None = Field(None, gt=0, le=MAX_ID)
    driver_id: int | None = Field(None, gt=0, le=MAX_ID)
    limit: int = Field(100, ge=1, le=500)
    offset: int = Field(0, ge=0, le=MAX_ID)

    @field_validator("status", "method", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


class ChargeRequest(BaseModel):
    """POST /v1/payments/charge body. The key may come in the `Idempotency-Key` header instead.

    Unknown fields are ignored (older clients send extras such as `amount`; the amount
    always comes from the Trip service) and take no part in the idempotency fingerprint.
    """

    # The seed document's charge: it succeeds on a fresh `make run` (seeds/README.md).
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "idempotency_key": "seed-charge-trip-1",
                    "trip_id": 1,
                    "rider_id": 101,
                    "driver_id": 201,
                    "method": "CARD",
                }
            ]
        },
    )

    idempotency_key: IdempotencyKeyStr | None = None
    trip_id: int = Field(gt=0, le=MAX_ID)
    method: PaymentMethod
    rider_id: int | None = Field(None, gt=0, le=MAX_ID)
    driver_id: int | None = Field(None, gt=0, le=MAX_ID)
    metadata: dict[MetadataKey, MetadataValue] | None = Field(
        None,
        max_length=METADATA_MAX_KEYS,
        description=(
            f"Your own string pairs, stored with the payment: at most {METADATA_MAX_KEYS} "
            f"keys of up to {METADATA_MAX_KEY_LENGTH} characters, values of up to "
            f"{METADATA_MAX_VALUE_LENGTH} (Stripe's limits); no NUL characters."
        ),
        examples=[{"order": "A-1042"}],
    )

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


class ChargeResponse(PaymentRead):
    message: str
