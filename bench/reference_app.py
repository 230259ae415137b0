"""The `bare_get` reference: GET /v1/payments/{id} with nothing but what the answer needs.

A plain ASGI callable under the same uvicorn (httptools, uvloop, the same worker count)
that runs the service's own statement (`PaymentReads.by_id`) on an asyncpg pool and
writes the service's own JSON (`payment_row_dict`, `jsonutil.dumps`), after comparing
the bench's API key as a string. No framework, no middleware, no metrics, request ids,
rate limits or problem documents. Its rate is about the most any Python app on uvicorn
can answer with this statement on the machine at hand, so `python -m bench` shows it
beside `get_payment`: the point-read ceiling (pgbench) leaves out HTTP altogether.

Not part of the service: the bench starts it with `uvicorn bench.reference_app:app`.
Environment: BENCH_REFERENCE_DSN (a libpq/asyncpg URL), BENCH_REFERENCE_KEY (the key the
bench's wrk scripts send), BENCH_REFERENCE_POOL (connections per worker, default 8).
"""

from __future__ import annotations

import os
from typing import Any

import asyncpg

from payment_service.jsonutil import dumps
from payment_service.repositories.payment import PaymentReads
from payment_service.schemas.payment import payment_row_dict

_PREFIX = "/v1/payments/"
_JSON = [(b"content-type", b"application/json")]


class _PoolReads:
    """What PaymentReads needs of `RawReads`, on a plain asyncpg pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        async with self.pool.acquire() as connection:
            return await connection.fetchrow(sql, *args)


async def _no_reset(connection: asyncpg.Connection) -> None:
    """asyncpg's default reset is a round trip per release; the service sends none either."""


class ReferenceApp:
    def __init__(self) -> None:
        self.reads: PaymentReads | None = None
        self.pool: asyncpg.Pool | None = None
        self.authorization = b""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        status, body = await self._answer(scope)
        await send({"type": "http.response.start", "status": status, "headers": _JSON})
        await send({"type": "http.response.body", "body": body})

    async def _answer(self, scope: dict[str, Any]) -> tuple[int, bytes]:
        path: str = scope["path"]
        if path == "/health/live":
            return 200, b'{"status":"UP"}'
        if not any(
            name == b"authorization" and value == self.authorization
            for name, value in scope["headers"]
        ):
            return 401, b'{"title":"Unauthorized"}'
        if scope["method"] != "GET" or not path.startswith(_PREFIX):
            return 404, b'{"title":"Not Found"}'
        try:
            payment_id = int(path[len(_PREFIX) :])
        except ValueError:
            return 422, b'{"title":"Validation Failed"}'
        assert self.reads is not None
        row = await self.reads.by_id(payment_id)
        if row is None:
            return 404, b'{"title":"Payment Not Found"}'
        return 200, dumps(payment_row_dict(row))

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.authorization = f"Bearer {os.environ['BENCH_REFERENCE_KEY']}".encode()
                size = int(os.environ.get("BENCH_REFERENCE_POOL", "8"))
                self.pool = await asyncpg.create_pool(
                    os.environ["BENCH_REFERENCE_DSN"], min_size=size, max_size=size, reset=_no_reset
                )
                self.reads = PaymentReads(_PoolReads(self.pool))  # type: ignore[arg-type]
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.pool is not None:
                    await self.pool.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


app = ReferenceApp()
