"""Types shared by the schemas: exact money, safe strings and closed enums.

Input types refuse what PostgreSQL or Decimal arithmetic would fail on later (a 500):
NUL characters and unpaired surrogates in text (PostgreSQL text cannot hold NUL, and
a lone surrogate cannot be encoded to UTF-8), and non-finite or huge amounts (the
decimal context would raise `InvalidOperation` when quantizing them).
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated

from pydantic import AfterValidator, Field, StringConstraints, WithJsonSchema

# Money is a Decimal everywhere; in JSON it is a number with at most two decimals. The
# schema says only "number": a float `multipleOf: 0.01` rejects real amounts such as 40.19
# in JSON Schema validators (binary floating point), so the two decimals are enforced in
# validation code, not in the document.
Money = Annotated[
    Decimal,
    Field(max_digits=12, decimal_places=2),
    WithJsonSchema({"type": "number", "examples": [99.01]}),
]

MAX_INTEGER_DIGITS = 12
_UNSAFE_TEXT = re.compile("[\x00\ud800-\udfff]")


def safe_text(value: str) -> str:
    """Refuse NUL and unpaired surrogates (a 422 instead of a database error)."""
    if (match := _UNSAFE_TEXT.search(value)) is not None:
        what = "NUL characters" if match.group() == "\x00" else "unpaired surrogates"
        raise ValueError(f"must not contain {what}")
    return value


def finite_money(value: Decimal) -> Decimal:
    """Refuse NaN, infinities and more than 12 integer digits, whatever the notation."""
    if not value.is_finite():
        raise ValueError("must be a finite number")
    if value != 0 and value.adjusted() >= MAX_INTEGER_DIGITS:
        raise ValueError(f"must have at most {MAX_INTEGER_DIGITS} digits before the point")
    return value


SafeStr = Annotated[str, AfterValidator(safe_text)]
"""Text that PostgreSQL can store: no NUL, valid Unicode."""

# At least one non-blank character: a key of only spaces is refused (the schema says so too,
# so generated clients and fuzzers do not send one expecting success).
IdempotencyKeyStr = Annotated[
    str,
    StringConstraints(min_length=1, max_length=255, pattern=r"\S"),
    AfterValidator(safe_text),
]
IdempotencyKeyHeader = Annotated[str, StringConstraints(pattern=r"\S"), AfterValidator(safe_text)]
"""The `Idempotency-Key` header (its length is checked with the body's key)."""

MoneyInput = Annotated[
    Decimal,
    Field(allow_inf_nan=False),
    AfterValidator(finite_money),
    WithJsonSchema(
        {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": 999_999_999_999.99,
            "examples": [50.0],
        }
    ),
]
"""An amount in a request: finite, at most 12 integer digits (a number or its string); > 0
and two decimals are checked by the service (no float `multipleOf` in the schema)."""

METADATA_MAX_KEYS = 20
METADATA_MAX_KEY_LENGTH = 40
METADATA_MAX_VALUE_LENGTH = 500
MetadataKey = Annotated[
    str, StringConstraints(max_length=METADATA_MAX_KEY_LENGTH), AfterValidator(safe_text)
]
MetadataValue = Annotated[
    str, StringConstraints(max_length=METADATA_MAX_VALUE_LENGTH), AfterValidator(safe_text)
]
