"""Sandbox Notification service: records what the outbox dispatcher delivers.

    POST   /v1/notifications   any JSON object -> 202 {"status": "accepted"}
    GET    /v1/notifications   {"count", "concurrent_duplicates", "duplicates", "notifications"}
    DELETE /v1/notifications   forget everything received -> {"cleared": n}
    GET/PUT /_sandbox/faults   see `payment_service.sandbox.faults`
    GET    /health             {"status": "UP"}

Each record is `{received_at, body, headers: {idempotency-key, x-request-id}}`.
Numbers in bodies are kept as `Decimal` (exact amounts), so compare them with
`Decimal("99.01")` in Python, or read them back over HTTP as JSON numbers.

A delivery's key is its `Idempotency-Key` header, else the body's `message_id`.
`concurrent_duplicates` counts requests that arrived while another one with the
same key was still being processed -- two dispatcher replicas delivering the same
outbox message at once. Processing includes the `slow` fault's delay, so put the
peer in slow mode to widen the window. `duplicates` counts accepted deliveries of
a key that had been accepted before (at-least-once redelivery, not a bug by itself).
"""

import contextlib
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from http import HTTPStatus
from json import JSONDecodeError
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from payment_service.sandbox._json import DecimalJSONResponse, dumps, loads
from payment_service.sandbox.faults import FaultSwitch, create_fault_router, fault_response

RECORDED_HEADERS = ("idempotency-key", "x-request-id")


class NotificationSink:
    """Received notifications, optionally mirrored to a JSONL file, plus the overlap detector."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.notifications: list[dict[str, Any]] = []
        self.concurrent_duplicates = 0
        self.duplicates = 0
        self._in_flight: Counter[str] = Counter()
        self._accepted_keys: set[str] = set()
        if path is not None and path.exists():
            self._load(path)

    def _load(self, path: Path) -> None:
        """Pick up what an earlier run recorded, so the file and the list agree."""
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = loads(line)
                except JSONDecodeError as exc:
                    raise ValueError(f"{path}:{number}: not a JSON line: {exc.msg}") from exc
                self.notifications.append(record)
                key = delivery_key(record.get("body", {}), record.get("headers", {}))
                if key is not None:
                    self._accepted_keys.add(key)

    @contextlib.contextmanager
    def track(self, key: str | None) -> Iterator[None]:
        """Mark a delivery of `key` as in progress, counting it when another one already is."""
        if key is None:
            yield
            return
        if self._in_flight[key] > 0:
            self.concurrent_duplicates += 1
        self._in_flight[key] += 1
        try:
            yield
        finally:
            self._in_flight[key] -= 1
            if self._in_flight[key] <= 0:
                del self._in_flight[key]

    def record(self, body: dict[str, Any], headers: dict[str, str | None]) -> dict[str, Any]:
        """Store one accepted delivery (and append it to the JSONL file when there is one)."""
        recorded = {name: headers.get(name) for name in RECORDED_HEADERS}
        entry = {
            "received_at": datetime.now(UTC).isoformat(timespec="microseconds"),
            "body": body,
            "headers": recorded,
        }
        key = delivery_key(body, recorded)
        if key is not None:
            if key in self._accepted_keys:
                self.duplicates += 1
            self._accepted_keys.add(key)
        self.notifications.append(entry)
        if self.path is not None:
            # A short local append; acceptable in a sandbox's event loop.
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(dumps(entry) + "\n")
        return entry

    def clear(self) -> int:
        """Forget every notification and counter (and empty the file); returns how many went."""
        cleared = len(self.notifications)
        self.notifications.clear()
        self._accepted_keys.clear()
        self.concurrent_duplicates = 0
        self.duplicates = 0
        if self.path is not None:
            self.path.write_text("", encoding="utf-8")
        return cleared

    def matching(self, **fields: Any) -> list[dict[str, Any]]:
        """Bodies whose fields equal these, e.g. `matching(type="refund", payment_id=7)`."""
        return [
            entry["body"]
            for entry in self.notifications
            if all(entry["body"].get(name) == value for name, value in fields.items())
        ]

    def snapshot(self) -> dict[str, Any]:
        """The `GET /v1/notifications` answer."""
        return {
            "count": len(self.notifications),
            "concurrent_duplicates": self.concurrent_duplicates,
            "duplicates": self.duplicates,
            "notifications": self.notifications,
        }


def delivery_key(body: dict[str, Any], headers: dict[str, str | None]) -> str | None:
    """What identifies a message: the Idempotency-Key header, else the body's `message_id`."""
    key = headers.get("idempotency-key")
    if key:
        return key
    message_id = body.get("message_id")
    return None if message_id is None else str(message_id)


def create_notification_app(sink: NotificationSink, faults: FaultSwitch) -> FastAPI:
    """The Notification service stand-in: deliveries obey the faults, inspection never does."""
    app = FastAPI(
        title="Sandbox Notification service",
        summary="Stand-in for the Notification service in development and tests.",
        version="1.0.0",
    )
    app.include_router(create_fault_router(faults, "notification"))

    @app.post(
        "/v1/notifications",
        status_code=HTTPStatus.ACCEPTED,
        response_model=None,
        tags=["notifications"],
    )
    async def post_notification(request: Request) -> dict[str, str] | JSONResponse:
        """Accept one JSON object, detecting a second in-flight delivery of the same key."""
        try:
            body = loads(await request.body())
        except (JSONDecodeError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            return JSONResponse(
                status_code=HTTPStatus.UNPROCESSABLE_ENTITY,
                content={"detail": "body must be a JSON object"},
            )
        headers = {name: request.headers.get(name) for name in RECORDED_HEADERS}
        with sink.track(delivery_key(body, headers)):
            status = await faults.gate()
            if status is not None:
                return fault_response(status, "notification", faults.mode)
            sink.record(body, headers)
        return {"status": "accepted"}

    @app.get("/v1/notifications", response_class=DecimalJSONResponse, tags=["notifications"])
    async def list_notifications() -> DecimalJSONResponse:
        """Everything received so far, oldest first, with the duplicate counters."""
        return DecimalJSONResponse(sink.snapshot())

    @app.delete("/v1/notifications", tags=["notifications"])
    async def clear_notifications() -> dict[str, int]:
        """Forget what was received, e.g. between tests."""
        return {"cleared": sink.clear()}

    @app.get("/health", tags=["sandbox control"])
    async def health() -> dict[str, str]:
        """Liveness for scripts waiting on the sandbox."""
        return {"status": "UP"}

    return app
