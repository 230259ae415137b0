"""Notification service client: one shared httpx client, a hard deadline per delivery.

`send` POSTs one outbox message to `/v1/notifications` and either returns (a 2xx)
or raises `NotificationDeliveryError`; the dispatcher never sees httpx exceptions.
Each delivery carries `Idempotency-Key: outbox-<id>` and the body's `message_id`,
so the receiver can drop the redeliveries that at-least-once delivery implies.
"""

from __future__ import annotations

import asyncio
import uuid
from types import TracebackType
from typing import Any

import httpx

from payment_service.jsonutil import dumps
from payment_service.observability import REQUEST_ID_HEADER
from payment_service.settings import Settings

NOTIFICATIONS_PATH = "/v1/notifications"
IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"


class NotificationDeliveryError(Exception):
    """A delivery that did not end in a 2xx: transport failure, timeout or error status."""

    def __init__(self, detail: str, *, status_code: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status_code = status_code


def idempotency_key(message_id: int) -> str:
    """The key the receiver deduplicates on; stable across every redelivery of a message."""
    return f"outbox-{message_id}"


class NotificationClient:
    """Async context manager owning the httpx client for the dispatcher's lifetime."""

    def __init__(self, settings: Settings, transport: httpx.AsyncBaseTransport | None = None):
        self._settings = settings
        self._transport = transport
        self._http: httpx.AsyncClient | None = None

    async def __aenter__(self) -> NotificationClient:
        timeout = self._settings.notification_timeout_seconds
        self._http = httpx.AsyncClient(
            base_url=self._settings.notification_service_url,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 2.0)),
            limits=httpx.Limits(max_connections=50, max_keepalive_connections=10),
            transport=self._transport,
            headers={"Accept": "application/json", "User-Agent": "payment-service"},
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def send(self, message_id: int, payload: dict[str, Any], request_id: str | None) -> None:
        """Deliver one message; returns on a 2xx, raises NotificationDeliveryError otherwise.

        The whole call (connect, write, read) is bounded by NOTIFICATION_TIMEOUT_SECONDS,
        not only each phase, so the dispatcher's lease on the message always outlasts it.
        """
        assert self._http is not None, "NotificationClient used outside its context"
        timeout = self._settings.notification_timeout_seconds
        body = dumps({**payload, "message_id": message_id})
        headers = {
            "Content-Type": "application/json",
            IDEMPOTENCY_KEY_HEADER: idempotency_key(message_id),
            REQUEST_ID_HEADER: request_id or uuid.uuid4().hex,
        }
        try:
            async with asyncio.timeout(timeout):
                response = await self._http.post(NOTIFICATIONS_PATH, content=body, headers=headers)
        except (TimeoutError, httpx.TimeoutException):
            raise NotificationDeliveryError(
                f"the Notification service did not answer within {timeout:g} s"
            ) from None
        except httpx.HTTPError as exc:
            reason = str(exc).splitlines()[0] if str(exc) else ""
            raise NotificationDeliveryError(
                f"the Notification service is unreachable: {type(exc).__name__}"
                + (f": {reason}" if reason else "")
            ) from None
        if not response.is_success:
            raise NotificationDeliveryError(
                f"the Notification service answered {response.status_code}",
                status_code=response.status_code,
            )
