"""JSON rendering that writes `Decimal` values as exact JSON numbers.

`json.dumps` cannot emit a Decimal, and going through `float` would let a computed
amount leak artefacts; the sandbox peers answer money as the Trip and Notification
services do: `99.01`, never `"99.01"` or `99.01000000000001`.
"""

import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from starlette.responses import Response


def dumps(value: Any) -> str:
    """Encode plain JSON data whose numbers may be `Decimal`, keeping their exact digits."""
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"{value} is not a JSON number")
        return format(value, "f")
    if isinstance(value, Mapping):
        items = (f"{json.dumps(str(key))}:{dumps(item)}" for key, item in value.items())
        return "{" + ",".join(items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(dumps(item) for item in value) + "]"
    return json.dumps(value, allow_nan=False)


def loads(text: str | bytes) -> Any:
    """Decode JSON with non-integer numbers as `Decimal`, so amounts round-trip unchanged."""
    return json.loads(text, parse_float=Decimal)


class DecimalJSONResponse(Response):
    """A JSON response whose `Decimal` values are written as exact numbers."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        """Render with `dumps` instead of Starlette's float-based encoder."""
        return dumps(content).encode("utf-8")
