"""Sandbox Notification service: records what the outbox dispatcher delivers.

    POST   /v1/notifications   any JSON object -> 202 {"status": "accepted"}
    GET    /v1/notifications   {"count", "concurrent_duplicates", "duplicates", "bad_signatures",
                                "signatures_checked", "notifications"}
    DELETE /v1/notifications   forget everything received -> {"cleared": n}
    GET/PUT /_sandbox/faults   see `payment_sandbox.faults`
    GET    /health             {"status": "UP"}

Each record is `{received_at, body, headers: {idempotency-key, x-request-id, webhook-id,
webhook-timestamp, webhook-signature, traceparent}, raw_body}`.
Numbers in bodies are kept as `Decimal` (exact amounts), so compare them with
`Decimal("99.01")` in Python, or read them back over HTTP as JSON numbers.

Given the Standard Webhooks secret (`NotificationSink(secret=...)`, `SandboxConfig.
notification_signing_secret`, `payment-service sandbox --notification-signing-secret`),
the sink verifies every delivery with the official `standardwebhooks` library, as a
real receiver would: a missing or wrong signature (or a stale timestamp) is answered
401, counted in `bad_signatures` and not recorded. Without a secret nothing is checked.

A delivery's key is its `webhook-id` header, else `Idempotency-Key`, else the body's
`message_id`.
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
from standardwebhooks import Webhook

from payment_sandbox._json import DecimalJSONResponse, dumps, loads
from payment_sandbox.faults import FaultSwitch, create_fault_router, fault_response

RECORDED_HEADERS = (
    "idempotency-key",
    "x-request-id",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "traceparent",
)


class NotificationSink:
    """Received notifications, optionally mirrored to a JSONL file, plus the overlap detector."""

    def __init__(self, path: Path | None = None, *, secret: str | None = None) -> None:
        self.path = path
        self.notifications: list[dict[str, Any]] = []
        self.concurrent_duplicates = 0
        self.duplicates = 0
        self.bad_signatures = 0
        self.signatures_checked = 0
        self._verifier = Webhook(secret) if secret else None
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

    def use_secret(self, secret: str | None) -> None:
        """Verify with another secret from now on (None: stop verifying)."""
        self._verifier = Webhook(secret) if secret else None

    @property
    def verifies(self) -> bool:
        """Whether deliveries must carry a valid Standard Webhooks signature."""
        return self._verifier is not None

    def verify(self, raw_body: bytes, headers: dict[str, str]) -> bool:
        """Check a delivery's signature (True when no secret is set); counts the bad ones."""
        if self._verifier is None:
            return True
        self.signatures_checked += 1
        try:
            self._verifier.verify(raw_body, headers, json_parse=False)
        except Exception:  # WebhookVerificationError, or a malformed signature header
            self.bad_signatures += 1
            return False
        return True

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

    def record(
        self, body: dict[str, Any], headers: dict[str, str | None], raw_body: bytes | None = None
    ) -> dict[str, Any]:
        """Store one accepted delivery (and append it to the JSONL file when there is one).

        `raw_body`, the bytes as received, is kept as `raw_body` text: a signature covers
        those exact bytes, so a test can verify it again on what arrived.
        """
        entry: dict[str, Any] = {
            "received_at": datetime.now(UTC).isoformat(timespec="microseconds"),
            "body": body,
            "headers": {name: headers.get(name) for name in RECORDED_HEADERS},
        }
        if raw_body is not None:
            entry["raw_body"] = raw_body.decode("utf-8", errors="replace")
        key = delivery_key(body, entry["headers"])
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
        self.bad_signatures = 0
        self.signatures_checked = 0
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
            "bad_signatures": self.bad_signatures,
            "signatures_checked": self.signatures_checked,
            "notifications": self.notifications,
        }


def delivery_key(body: dict[str, Any], headers: dict[str, str | None]) -> str | None:
    """What identifies a message: `webhook-id`, else `Idempotency-Key`, else `message_id`."""
    key = headers.get("webhook-id") or headers.get("idempotency-key")
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
        raw = await request.body()
        if not sink.verify(raw, dict(request.headers)):
            return JSONResponse(
                status_code=HTTPStatus.UNAUTHORIZED,
                content={"detail": "invalid or missing webhook signature"},
            )
        try:
            body = loads(raw)
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
            sink.record(body, headers, raw)
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
