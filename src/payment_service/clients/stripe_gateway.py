"""The Stripe adapter: `PaymentGateway` over the official `stripe` SDK (async, on aiohttp).

A charge is one PaymentIntent created with `confirm=true` and the payment's own
gateway idempotency key as `Idempotency-Key`; a refund is one Refund with the
refund's key. Stripe saves the first answer to a key for 24 h and replays it, so
resending the same request is how a lost answer is recovered (`lookup_charge`,
`lookup_refund`) and can never move money twice.

Errors, translated so no `stripe` exception reaches the services:
- a card decline (HTTP 402) is not an error: a FAILED result with the decline code;
- no answer (connection refused, timeout), HTTP 5xx, 429 and 409
  `idempotency_key_in_use` (the first request is still running) raise
  `GatewayUnavailableError`: the payment stays PROCESSING and is retried with the same key;
- 401/403 raise `GatewayAuthError`: an operator must fix STRIPE_API_KEY;
- other 400s on a charge (our parameters are wrong) raise `GatewayUnavailableError`
  with Stripe's message; on a refund they are a FAILED refund (Stripe refused it and
  moved nothing, e.g. more than what remains), so its amount is refundable again; so is
  a refund of a payment without a PaymentIntent id (imported from the old system).

Amounts go to Stripe in minor units, computed exactly from `Decimal` (never float).
The confirming PaymentMethod is STRIPE_PAYMENT_METHOD (a test card by default); a
real integration passes the rider's saved method, per charge, as metadata
`payment_method`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import AsyncIterable, Awaitable, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import httpx
import stripe

from payment_service.clients.gateway import (
    ChargeAttempt,
    ChargeResult,
    GatewayAuthError,
    GatewayEvent,
    GatewayUnavailableError,
    InvalidWebhookError,
    ProcessorRecord,
    RefundAttempt,
    RefundResult,
)
from payment_service.clients.http import PeerClient
from payment_service.models.enums import PaymentStatus, RefundStatus
from payment_service.settings import ConfigurationError, Settings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger(__name__)

WEBHOOK_TOLERANCE_SECONDS = 300
PAYMENT_METHOD_KEY = "payment_method"  # charge metadata: the rider's saved PaymentMethod
LIST_PAGE = 100
METADATA_MAX_KEY_LENGTH = 40  # Stripe's limit; our API allows 64-character keys
# Stripe's currencies without minor units, and those with three decimals.
ZERO_DECIMAL_CURRENCIES = frozenset(
    [
        "bif",
        "clp",
        "djf",
        "gnf",
        "jpy",
        "kmf",
        "krw",
        "mga",
        "pyg",
        "rwf",
        "ugx",
        "vnd",
        "vuv",
        "xaf",
        "xof",
        "xpf",
    ]
)
THREE_DECIMAL_CURRENCIES = frozenset(["bhd", "jod", "kwd", "omr", "tnd"])

PAYMENT_EVENTS = {
    "payment_intent.succeeded",
    "payment_intent.payment_failed",
    "payment_intent.processing",
    "payment_intent.canceled",
}
REFUND_EVENTS = {"refund.created", "refund.updated", "refund.failed"}
REFUND_STATUSES = {
    "succeeded": RefundStatus.SUCCEEDED,
    "pending": RefundStatus.PROCESSING,
    "requires_action": RefundStatus.PROCESSING,
    "failed": RefundStatus.FAILED,
    "canceled": RefundStatus.FAILED,
}


def currency_exponent(currency: str) -> int:
    """Digits after the decimal point in Stripe's amounts for this currency (INR, USD: 2)."""
    code = currency.lower()
    if code in ZERO_DECIMAL_CURRENCIES:
        return 0
    if code in THREE_DECIMAL_CURRENCIES:
        return 3
    return 2


def to_minor_units(amount: Decimal, currency: str) -> int:
    """Decimal major units -> Stripe's integer amount, exactly; sub-unit amounts are a bug."""
    scaled = amount.scaleb(currency_exponent(currency))
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{amount} {currency.upper()} has more decimals than the currency")
    return int(scaled)


def from_minor_units(amount: int, currency: str) -> Decimal:
    """Stripe's integer amount -> Decimal major units (1050 INR -> Decimal('10.50'))."""
    return Decimal(amount).scaleb(-currency_exponent(currency))


def _failure_reason(error: Mapping[str, Any] | None, default: str) -> str:
    if not error:
        return default
    return str(error.get("decline_code") or error.get("code") or default)


class StripeGateway:
    """Charges, refunds, lookups and webhooks against Stripe or the sandbox processor."""

    name = "stripe"

    def __init__(
        self, settings: Settings, *, tracer_provider: TracerProvider | None = None
    ) -> None:
        if settings.stripe_api_key is None:
            raise ConfigurationError(
                "GATEWAY=stripe needs STRIPE_API_KEY (or set GATEWAY=simulator)"
            )
        self._peer = PeerClient(
            base_url=settings.stripe_api_base,
            timeout=settings.stripe_timeout_seconds,
            connect_timeout=settings.stripe_timeout_seconds,
            max_connections=100,
            tracer_provider=tracer_provider,
            verify=ssl.create_default_context(cafile=stripe.ca_bundle_path),
        )
        self._peer.open()
        self._http = PeerHTTPClient(self._peer)
        self._client = stripe.StripeClient(
            settings.stripe_api_key.get_secret_value(),
            base_addresses={"api": settings.stripe_api_base},
            http_client=self._http,
            max_network_retries=settings.stripe_max_network_retries,
        )
        secret = settings.stripe_webhook_secret
        self._webhook_secret = secret.get_secret_value() if secret is not None else None
        self._payment_method = settings.stripe_payment_method

    # --- charges ---------------------------------------------------------------------

    def charge_params(self, attempt: ChargeAttempt) -> dict[str, Any]:
        """The PaymentIntent request; identical on every retry, so Stripe can replay it."""
        # Keys Stripe cannot hold (over 40 characters, or with brackets) stay in our database
        # only: dropping them keeps the request valid and the same on every retry.
        metadata = {
            key: str(value)
            for key, value in attempt.metadata.items()
            if len(key) <= METADATA_MAX_KEY_LENGTH and not any(c in key for c in "[]")
        }
        payment_method = metadata.pop(PAYMENT_METHOD_KEY, None) or self._payment_method
        metadata.update(
            payment_id=str(attempt.payment_id),
            reference=attempt.reference,
            trip_id=str(attempt.trip_id),
            method=attempt.method.value,
        )
        return {
            "amount": to_minor_units(attempt.amount, attempt.currency),
            "currency": attempt.currency.lower(),
            "confirm": True,
            "payment_method": payment_method,
            # A server-side confirm has no page to come back to: no redirect-based methods.
            "automatic_payment_methods": {"enabled": True, "allow_redirects": "never"},
            "description": f"Trip {attempt.trip_id} ({attempt.reference})",
            "metadata": metadata,
        }

    async def charge(self, attempt: ChargeAttempt) -> ChargeResult:
        """Create and confirm the payment's PaymentIntent (a decline is a FAILED result)."""
        try:
            intent = await self._client.v1.payment_intents.create_async(
                params=self.charge_params(attempt),  # type: ignore[arg-type]
                options={"idempotency_key": attempt.idempotency_key},
            )
        except stripe.CardError as exc:
            return self._declined(exc)
        except stripe.StripeError as exc:
            raise self._translate(exc, "charge") from exc
        return self._charge_result(_plain(intent))

    async def lookup_charge(self, attempt: ChargeAttempt) -> ChargeResult:
        """The PaymentIntent's current state; without its id, resend the create to learn it."""
        intent_id = attempt.gateway_reference
        try:
            if intent_id is None:
                try:
                    created = await self._client.v1.payment_intents.create_async(
                        params=self.charge_params(attempt),  # type: ignore[arg-type]
                        options={"idempotency_key": attempt.idempotency_key},
                    )
                    intent_id = str(created.id)
                except stripe.CardError as exc:
                    intent_id = self._declined_intent_id(exc)
                    if intent_id is None:
                        return self._declined(exc)
            intent = await self._client.v1.payment_intents.retrieve_async(intent_id)
        except stripe.StripeError as exc:
            raise self._translate(exc, "charge lookup") from exc
        return self._charge_result(_plain(intent))

    @staticmethod
    def _charge_result(intent: Mapping[str, Any]) -> ChargeResult:
        status, reference = intent["status"], intent["id"]
        if status == "succeeded":
            return ChargeResult(PaymentStatus.SUCCESS, reference, "Payment successful")
        if status in {"processing", "requires_capture"}:
            # requires_capture cannot happen with automatic capture; treat it as not final.
            return ChargeResult(
                PaymentStatus.PENDING, reference, "Payment is pending confirmation by the provider"
            )
        if status == "requires_payment_method":
            error = intent.get("last_payment_error")
            return ChargeResult(
                PaymentStatus.FAILED,
                reference,
                "Payment declined by the provider",
                failure_reason=_failure_reason(error, "requires_payment_method"),
            )
        # requires_action (3-D Secure: nobody is there to authenticate), canceled,
        # requires_confirmation: no money moved and none will without the rider.
        return ChargeResult(
            PaymentStatus.FAILED,
            reference,
            f"Payment not completed by the provider ({status})",
            failure_reason=status,
        )

    @staticmethod
    def _declined_intent_id(exc: stripe.CardError) -> str | None:
        body = exc.json_body if isinstance(exc.json_body, dict) else {}
        intent = (body.get("error") or {}).get("payment_intent") or {}
        return intent.get("id") if isinstance(intent, dict) else None

    def _declined(self, exc: stripe.CardError) -> ChargeResult:
        body = exc.json_body if isinstance(exc.json_body, dict) else {}
        error = body.get("error") or {}
        return ChargeResult(
            PaymentStatus.FAILED,
            self._declined_intent_id(exc),
            error.get("message") or "Payment declined by the provider",
            failure_reason=_failure_reason(error, "card_declined"),
        )

    # --- refunds ---------------------------------------------------------------------

    @staticmethod
    def refund_params(attempt: RefundAttempt) -> dict[str, Any]:
        """The Refund request; identical on every retry, so Stripe can replay it."""
        metadata = {"refund_id": str(attempt.refund_id), "payment_id": str(attempt.payment_id)}
        if attempt.reason:
            metadata["reason"] = attempt.reason[:500]  # Stripe's limit for a metadata value
        return {
            "payment_intent": attempt.payment_gateway_reference,
            "amount": to_minor_units(attempt.amount, attempt.currency),
            "metadata": metadata,
        }

    async def refund(self, attempt: RefundAttempt) -> RefundResult:
        """Create the refund; Stripe refusing it (400) is a FAILED refund, not an outage."""
        if attempt.payment_gateway_reference is None:
            # E.g. a payment imported from the old system: Stripe holds nothing to refund.
            return RefundResult(RefundStatus.FAILED, None, failure_reason="no_processor_reference")
        try:
            refund = await self._client.v1.refunds.create_async(
                params=self.refund_params(attempt),  # type: ignore[arg-type]
                options={"idempotency_key": attempt.idempotency_key},
            )
        except stripe.InvalidRequestError as exc:
            if exc.http_status == 400:
                return RefundResult(RefundStatus.FAILED, None, failure_reason=exc.code or "refused")
            raise self._translate(exc, "refund") from exc
        except stripe.StripeError as exc:
            raise self._translate(exc, "refund") from exc
        return self._refund_result(_plain(refund))

    async def lookup_refund(self, attempt: RefundAttempt) -> RefundResult:
        """The refund's current state; without its id, resend the create to learn it."""
        refund_id = attempt.gateway_reference
        try:
            if refund_id is None:
                result = await self.refund(attempt)
                if result.gateway_reference is None or result.status is not RefundStatus.PROCESSING:
                    return result
                refund_id = result.gateway_reference
            refund = await self._client.v1.refunds.retrieve_async(refund_id)
        except stripe.StripeError as exc:
            raise self._translate(exc, "refund lookup") from exc
        return self._refund_result(_plain(refund))

    @staticmethod
    def _refund_result(refund: Mapping[str, Any]) -> RefundResult:
        status = REFUND_STATUSES.get(refund["status"], RefundStatus.PROCESSING)
        reason = refund.get("failure_reason") if status is RefundStatus.FAILED else None
        return RefundResult(status, refund["id"], failure_reason=reason or None)

    # --- reconciliation --------------------------------------------------------------

    async def processor_record(self, attempt: ChargeAttempt) -> ProcessorRecord | None:
        """Captured and refunded money for the payment's PaymentIntent; None if none is known."""
        if attempt.gateway_reference is None:
            return None
        intents = self._client.v1.payment_intents
        try:
            intent = _plain(await intents.retrieve_async(attempt.gateway_reference))
            charges = await self._list_all(
                self._client.v1.charges.list_async, attempt.gateway_reference
            )
            refunds = await self._list_all(
                self._client.v1.refunds.list_async, attempt.gateway_reference
            )
        except stripe.InvalidRequestError as exc:
            if exc.code == "resource_missing":
                return None
            raise self._translate(exc, "processor record") from exc
        except stripe.StripeError as exc:
            raise self._translate(exc, "processor record") from exc
        currency = intent["currency"]
        succeeded = [charge for charge in charges if charge["status"] == "succeeded"]
        captured = sum(int(charge["amount_captured"]) for charge in succeeded)
        refunded = sum(
            int(refund["amount"]) for refund in refunds if refund["status"] == "succeeded"
        )
        status = self._charge_result(intent).status
        if status is PaymentStatus.SUCCESS and refunded:
            status = (
                PaymentStatus.REFUNDED if refunded >= captured else PaymentStatus.PARTIALLY_REFUNDED
            )
        return ProcessorRecord(
            gateway_reference=intent["id"],
            status=status,
            captured=from_minor_units(captured, currency),
            refunded=from_minor_units(refunded, currency),
            captures=len(succeeded),
        )

    @staticmethod
    async def _list_all(list_async: Any, intent_id: str) -> list[dict[str, Any]]:
        """Every page of a list filtered by PaymentIntent (there are rarely more than one)."""
        items: list[dict[str, Any]] = []
        params: dict[str, Any] = {"payment_intent": intent_id, "limit": LIST_PAGE}
        while True:
            page = await list_async(params=params)
            items.extend(_plain(item) for item in page.data)
            if not page.has_more or not page.data:
                return items
            params = {**params, "starting_after": items[-1]["id"]}

    # --- webhooks --------------------------------------------------------------------

    def parse_webhook(self, payload: bytes, headers: Mapping[str, str]) -> GatewayEvent | None:
        """Verify `Stripe-Signature` (5 min tolerance) and reduce the event to what we apply."""
        if self._webhook_secret is None:
            raise InvalidWebhookError("STRIPE_WEBHOOK_SECRET is not set: webhooks cannot verify")
        signature = next(
            (value for name, value in headers.items() if name.lower() == "stripe-signature"), None
        )
        if not signature:
            raise InvalidWebhookError("no Stripe-Signature header")
        try:
            stripe.Webhook.construct_event(
                payload, signature, self._webhook_secret, tolerance=WEBHOOK_TOLERANCE_SECONDS
            )
            event = json.loads(payload)
            event_id, event_type = event["id"], event["type"]
            obj = event["data"]["object"]
        except stripe.SignatureVerificationError as exc:
            raise InvalidWebhookError(f"signature does not verify: {exc.user_message}") from exc
        except (ValueError, KeyError, TypeError) as exc:  # verified, but not an event
            raise InvalidWebhookError(f"not a Stripe event: {exc}") from exc
        metadata = obj.get("metadata") or {}
        if event_type in PAYMENT_EVENTS:
            result = self._charge_result(obj)
            if event_type == "payment_intent.payment_failed":
                result = ChargeResult(
                    PaymentStatus.FAILED,
                    obj["id"],
                    result.message,
                    failure_reason=_failure_reason(obj.get("last_payment_error"), "declined"),
                )
            return GatewayEvent(
                event_id=event_id,
                kind="payment",
                gateway_reference=obj["id"],
                payment_id=_int_or_none(metadata.get("payment_id")),
                refund_id=None,
                payment_status=result.status,
                failure_reason=result.failure_reason,
            )
        if event_type in REFUND_EVENTS:
            status = REFUND_STATUSES.get(obj.get("status"), RefundStatus.PROCESSING)
            return GatewayEvent(
                event_id=event_id,
                kind="refund",
                gateway_reference=obj["id"],
                payment_id=_int_or_none(metadata.get("payment_id")),
                refund_id=_int_or_none(metadata.get("refund_id")),
                refund_status=status,
                failure_reason=obj.get("failure_reason") if status is RefundStatus.FAILED else None,
            )
        return None

    # --- plumbing --------------------------------------------------------------------

    @staticmethod
    def _translate(exc: stripe.StripeError, operation: str) -> GatewayUnavailableError:
        """Map an SDK error to the service's domain errors (never let one escape)."""
        status = exc.http_status
        if isinstance(exc, stripe.AuthenticationError | stripe.PermissionError):
            log.error("stripe refused our credentials on %s: %s", operation, exc.user_message)
            return GatewayAuthError(
                f"The payment processor refused our credentials ({status}); "
                "an operator must check STRIPE_API_KEY."
            )
        if isinstance(exc, stripe.APIConnectionError):
            return GatewayUnavailableError(
                f"The payment processor did not answer the {operation} in time; "
                "retry with the same key."
            )
        if isinstance(exc, stripe.RateLimitError):
            return GatewayUnavailableError(
                f"The payment processor is rate limiting ({operation}); retry with the same key.",
                retry_after=5,
            )
        if status == 409 or exc.code == "idempotency_key_in_use":
            return GatewayUnavailableError(
                f"The processor is still working on this {operation}; retry with the same key."
            )
        if isinstance(exc, stripe.IdempotencyError | stripe.InvalidRequestError):
            # Our request is wrong (a bug, or a key reused with other parameters): say so loudly.
            log.error(
                "stripe refused the %s request (%s %s): %s",
                operation,
                status,
                exc.code,
                exc.user_message,
            )
            return GatewayUnavailableError(
                f"The payment processor refused the {operation} request ({status}"
                f"{' ' + exc.code if exc.code else ''}): {exc.user_message}"
            )
        return GatewayUnavailableError(
            f"The payment processor failed ({status or 'no status'}) on the {operation}; "
            "retry with the same key."
        )

    async def aclose(self) -> None:
        """Close the connection pool to the processor (the app's lifespan owns the gateway)."""
        await self._peer.aclose()


class PeerHTTPClient(stripe.HTTPClient):
    """The SDK's HTTP client over one of our `PeerClient`s (the aiohttp transport).

    The SDK's own `HTTPXClient` sends through `httpx.AsyncClient`, which costs more
    CPU than the request itself (see `clients/http`) and leaves every response in a
    reference cycle (response -> stream -> response): ~400 responses, ~10k objects,
    a second for the collector at 370 charges/s. The SDK still builds, signs, retries and parses;
    this only moves the bytes, with the same tracing as our other peers.
    """

    name = "payment-service"

    def __init__(self, peer: PeerClient) -> None:
        super().__init__()
        self._peer = peer

    def sleep_async(self, secs: float) -> Awaitable[None]:
        return asyncio.sleep(secs)

    async def request_async(
        self, method: str, url: str, headers: Mapping[str, str], post_data: Any = None
    ) -> tuple[bytes, int, Mapping[str, str]]:
        content = post_data.encode() if isinstance(post_data, str) else post_data
        try:
            response = await self._peer.fetch(method, url, headers=headers, content=content)
        except (httpx.HTTPError, OSError) as exc:
            raise stripe.APIConnectionError(
                f"Could not reach the payment processor ({type(exc).__name__}).",
                should_retry=True,
            ) from exc
        return response.content, response.status_code, response.headers

    async def request_stream_async(
        self, method: str, url: str, headers: Mapping[str, str], post_data: Any = None
    ) -> tuple[AsyncIterable[bytes], int, Mapping[str, str]]:
        raise NotImplementedError("the Stripe adapter reads no streamed responses")

    async def close_async(self) -> None:
        await self._peer.aclose()


def _plain(obj: Any) -> dict[str, Any]:
    """An SDK object as plain data (StripeObject has no `.get`), so one mapper reads both."""
    return obj.to_dict() if isinstance(obj, stripe.StripeObject) else dict(obj)


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
