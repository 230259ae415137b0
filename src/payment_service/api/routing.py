"""A route class whose JSON bodies keep fractional numbers as Decimal (money never floats)."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from decimal import Decimal
from typing import Any, Protocol

from fastapi import Request, Response
from fastapi.routing import APIRoute


class _DecimalJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = json.loads(await self.body(), parse_float=Decimal)
        return self._json


class MoneyRoute(APIRoute):
    """Parse request JSON with `parse_float=Decimal` (stdlib json, so FastAPI still
    recognises a malformed body and answers 400)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def decimal_handler(request: Request) -> Response:
            return await handler(_DecimalJSONRequest(request.scope, request.receive))

        return decimal_handler


class IdempotentOutcome(Protocol):
    """What the charge, refund, tip and adjustment services answer with."""

    @property
    def status_code(self) -> int: ...

    @property
    def body(self) -> bytes: ...

    @property
    def replayed(self) -> bool: ...


def idempotent_response(outcome: IdempotentOutcome) -> Response:
    """The stored (or just recorded) answer, marked `Idempotent-Replayed` on a replay."""
    headers = {"Idempotent-Replayed": "true"} if outcome.replayed else None
    return Response(
        outcome.body,
        status_code=outcome.status_code,
        media_type="application/json",
        headers=headers,
    )
