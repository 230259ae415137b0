"""Types shared by the schemas: exact money and closed enums."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from pydantic import Field, WithJsonSchema

# Money is a Decimal everywhere; in JSON it is a number with at most two decimals.
Money = Annotated[
    Decimal,
    Field(max_digits=12, decimal_places=2),
    WithJsonSchema({"type": "number", "multipleOf": 0.01, "examples": [99.01]}),
]

IdempotencyKeyStr = Annotated[str, Field(min_length=1, max_length=255)]
