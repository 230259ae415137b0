"""Notification service client: one shared httpx client, a hard deadline per delivery.

`send` POSTs one outbox message to `/v1/notifications` and either returns (a 2xx)
or raises `NotificationDeliveryError`; the dispatcher never sees httpx exceptions.
Each delivery carries the message's global `event_id` (a UUID) as `Idempotency-Key`
and as the Standard Webhooks `webhook-id` (and in the body, beside the local
`message_id`), so the receiver can drop the redeliveries that at-least-once
delivery implies. With NOTIFICATION_SIGNING_SECRET set, `webhook-signature` signs
`<webhook-id>.<webhook-timestamp>.<body>` (the official `standardwebhooks` library),
so the receiver can also tell our messages from anyone else's.

Requests go through aiohttp unless a test passes a transport (`clients/http.py`).
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aiohttp
import httpx
from standardwebhooks import Webhook

from payment_service.clients.http import PeerClient, is_timeout, original_error
from payment_service.jsonutil import dumps
from payment_service.observability import REQUEST_ID_HEADER
from payment_service.settings import Settings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

NOTIFICATIONS_PATH = "/v1/notifications"
IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
WEBHOOK_ID_HEADER = "webhook-id"
WEBHOOK_TIMESTAMP_HEADER = "webhook-timestamp"
WEBHOOK_SIGNATURE_HEADER = "webhook-signature"
MAX_CONNECTIONS = 50


class NotificationDeliveryError(Exception):
    """A delivery that did not end in a 2xx: transport failure, timeout or error status."""

    def __init__(self, detail: str, *, status_code: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status_code = status_code


def idempotency_key(event_id: uuid.UUID) -> str:
    """The key the receiver deduplicates on: stable across redeliveries, unique across databases."""
    return str(event_id)


class NotificationClient(PeerClient):
    """The Notification service: `POST /v1/notifications`, for the dispatcher's lifetime."""

    def __init__(
        self,
        settings: Settings,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        tracer_provider: TracerProvider | None = None,
    ):
        super().__init__(
            base_url=settings.notification_service_url,
            timeout=settings.notification_timeout_seconds,
            connect_timeout=2.0,
            max_connections=MAX_CONNECTIONS,
            transport=transport,
            tracer_provider=tracer_provider,
        )
        self._settings = settings
        secret = settings.notification_signing_secret
        self._signer = Webhook(secret.get_secret_value()) if secret is not None else None

    def headers(self, event_id: uuid.UUID, body: bytes, request_id: str | None) -> dict[str, str]:
        """The delivery's headers; signed (Standard Webhooks v1) when a secret is configured."""
        webhook_id = idempotency_key(event_id)
        now = datetime.now(UTC)
        headers = {
            "Content-Type": "application/json",
            IDEMPOTENCY_KEY_HEADER: webhook_id,
            WEBHOOK_ID_HEADER: webhook_id,
            WEBHOOK_TIMESTAMP_HEADER: str(int(now.timestamp())),
            REQUEST_ID_HEADER: request_id or uuid.uuid4().hex,
        }
        if self._signer is not None:
            headers[WEBHOOK_SIGNATURE_HEADER] = self._signer.sign(
                webhook_id, now, body.decode("utf-8")
            )
        return headers

    async def send(
        self,
        event_id: uuid.UUID,
        message_id: int,
        payload: dict[str, Any],
        request_id: str | None,
    ) -> None:
        """Deliver one message; returns on a 2xx, raises NotificationDeliveryError otherwise.

        The whole call (connect, write, read) is bounded by NOTIFICATION_TIMEOUT_SECONDS,
        not only each phase, so the dispatcher's lease on the message always outlasts it.
        Each attempt is signed afresh: the timestamp is the attempt's, as receivers that
        reject old timestamps (replay protection) expect.
        """
        timeout = self._settings.notification_timeout_seconds
        body = dumps({**payload, "message_id": message_id, "event_id": str(event_id)})
        headers = self.headers(event_id, body, request_id)
        try:
            async with asyncio.timeout(timeout):
                response = await self.request(
                    "POST", NOTIFICATIONS_PATH, content=body, headers=headers
                )
        except (TimeoutError, httpx.HTTPError, aiohttp.ClientError) as exc:
            raise _delivery_error(exc, timeout) from None
        if not response.is_success:
            raise NotificationDeliveryError(
                f"the Notification service answered {response.status_code}",
                status_code=response.status_code,
            )


def _delivery_error(exc: BaseException, timeout: float) -> NotificationDeliveryError:
    """A timeout, or the peer unreachable (refused, reset, a bad answer)."""
    if is_timeout(exc):
        return NotificationDeliveryError(
            f"the Notification service did not answer within {timeout:g} s"
        )
    original = original_error(exc)
    reason = str(original).splitlines()[0] if str(original) else ""
    return NotificationDeliveryError(
        f"the Notification service is unreachable: {type(original).__name__}"
        + (f": {reason}" if reason else "")
    )
