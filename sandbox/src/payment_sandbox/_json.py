"""JSON rendering that writes `Decimal` values as exact JSON numbers.

`json.dumps` cannot emit a Decimal, and going through `float` would let a computed
amount leak artefacts; the sandbox peers answer money as the Trip and Notification
services do: `99.01`, never `"99.01"` or `99.01000000000001`.
"""

import json
from collections.abc import Awaitable, Callable, Mapping
from decimal import Decimal
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.responses import Response

M = TypeVar("M", bound=BaseModel)


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


def json_body(model: type[M]) -> Callable[[Request], Awaitable[M]]:
    """A dependency reading `model` from a JSON body whatever its content type.

    So a bare `curl -d '{...}'` (form content type) works, and numbers reach the
    model as Decimal rather than through float.
    """

    async def parse(request: Request) -> M:
        """Decode and validate, answering FastAPI's usual 422 on either failure."""
        raw = await request.body()
        try:
            data = loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            error = {"type": "json_invalid", "loc": ("body",), "msg": f"invalid JSON: {exc}"}
            raise RequestValidationError([error]) from exc
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            errors = [
                {**error, "loc": ("body", *error["loc"])}
                for error in exc.errors(include_url=False, include_context=False)
            ]
            raise RequestValidationError(errors, body=data) from exc

    return parse


def json_body_openapi(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` documenting a body read by `json_body`, which FastAPI cannot see."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": schema}},
        }
    }
