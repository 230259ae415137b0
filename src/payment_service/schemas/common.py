"""Types shared by the schemas: exact money and closed enums."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from pydantic import Field, WithJsonSchema

# Money is a Decimal everywhere; in JSON it is a number with at most two decimals. The
# schema says only "number": a float `multipleOf: 0.01` rejects real amounts such as 40.19
# in JSON Schema validators (binary floating point), so the two decimals are enforced in
# validation code, not in the document.
Money = Annotated[
    Decimal,
    Field(max_digits=12, decimal_places=2),
    WithJsonSchema({"type": "number", "examples": [99.01]}),
]

# A money amount a client sends: a JSON number (> 0 and two decimals checked by the service).
MoneyInput = Annotated[
    Decimal,
    WithJsonSchema({"type": "number", "exclusiveMinimum": 0, "examples": [50.0]}),
]

IdempotencyKeyStr = Annotated[str, Field(min_length=1, max_length=255)]
