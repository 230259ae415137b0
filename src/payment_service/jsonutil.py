"""JSON with exact money: `Decimal` is written as a JSON number (`99.01`), never via float."""

from __future__ import annotations

from datetime import UTC, date, datetime
from enum import Enum
from typing import Any

import simplejson
from starlette.responses import JSONResponse


def utc_timestamp(value: datetime) -> str:
    """A datetime as `dumps` writes it: ISO 8601 in UTC with `Z` (naive means UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return utc_timestamp(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def dumps(content: Any) -> bytes:
    """Compact UTF-8 JSON; Decimals as numbers, datetimes as ISO 8601 UTC."""
    return simplejson.dumps(
        content, use_decimal=True, default=_default, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")


def json_text(content: Any) -> str:
    """`dumps` as text: a JSONB parameter sent straight to asyncpg (the engine's jsonb codec
    takes the document as a string, as SQLAlchemy's own JSONB binding hands it over)."""
    return dumps(content).decode("utf-8")


def loads(raw: str | bytes) -> Any:
    """Parse JSON keeping numbers with a fraction as Decimal."""
    return simplejson.loads(raw, use_decimal=True)


class MoneyJSONResponse(JSONResponse):
    """The app's default response class, so Decimals never pass through float."""

    def render(self, content: Any) -> bytes:
        return dumps(content)
