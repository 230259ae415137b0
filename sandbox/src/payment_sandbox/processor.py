"""Sandbox payment processor: the subset of Stripe's API the Stripe adapter uses, in memory.

It speaks Stripe's wire format, so the official `stripe` SDK talks to it unchanged
(`STRIPE_API_BASE=http://127.0.0.1:8087`): form-encoded bodies with bracket keys
(`metadata[payment_id]=7`), JSON answers, Stripe's error envelope
`{"error": {"type", "code", "message", "param", ...}}`, `Authorization: Bearer
sk_test_...` (else 401) and `Idempotency-Key` exactly as Stripe documents it:

- same key + same parameters: the saved answer again (status and body, even a 402
  decline), with `Idempotent-Replayed: true`;
- same key + other parameters (or another endpoint): 400 `idempotency_error`;
- same key while the first request still runs: 409 `idempotency_key_in_use`;
- requests refused by validation (and injected 500s, which happen "in front of" the
  API) save nothing, so the same key can be sent again. Keys are per API key and
  expire after 24 h.

Endpoints (all under Bearer auth):

    POST /v1/payment_intents               create; with confirm=true also charge
    POST /v1/payment_intents/{id}/confirm  charge a PaymentIntent created unconfirmed
    GET  /v1/payment_intents/{id}          (expand[]=latest_charge)
    GET  /v1/charges?payment_intent=pi_...
    POST /v1/refunds                       payment_intent, amount, metadata, reason
    GET  /v1/refunds/{id}
    GET  /v1/refunds?payment_intent=pi_...

Refused as Stripe refuses: unknown parameters (400 `parameter_unknown`), a confirm
that allows redirect-based methods (`automatic_payment_methods[allow_redirects]`
not `never`, the default) without `return_url`, amounts that are not integers >= 1.

Outcome of a charge, first match wins: the fault mode `decline` / `pending`; then
`metadata[simulate]` = decline | pending | success; then the PaymentMethod
(`pm_card_chargeDeclined` declines, `pm_card_authenticationRequired` needs action);
else success. A decline answers 402 `card_declined` with the PaymentIntent
embedded (status `requires_payment_method`); pending answers `processing` and
succeeds `delay_seconds` later. Refunds: `decline` -> `failed`, `pending` ->
`pending` then `succeeded`, else `succeeded`.

Other fault modes: `fail` answers 500 before doing anything, `flaky` does so for the
next `count` requests, `slow` waits `delay_seconds` (while holding the idempotency
key, so a concurrent retry gets 409), `timeout_after_capture` moves the money and
saves the idempotent answer, then holds the request open until the client gives up.

Webhooks, when a URL and signing secret are configured: `payment_intent.succeeded`,
`payment_intent.payment_failed`, `refund.created`, `refund.updated` and
`refund.failed`, signed `Stripe-Signature: t=<unix>,v1=<HMAC-SHA256(secret,
"<t>.<body>")>` as Stripe signs (so `stripe.Webhook.construct_event` verifies them),
retried with backoff a bounded number of times.

`ledger()` (`GET /processor/ledger` on the control API) tells per PaymentIntent what
was captured and refunded, for comparison with the service's database.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from payment_sandbox.faults import FaultMode, FaultSwitch, create_fault_router

logger = logging.getLogger("payment_sandbox.processor")

API_VERSION = "2025-09-30.clover"
IDEMPOTENCY_TTL_SECONDS = 24 * 3600
IDEMPOTENCY_CAPACITY = 200_000  # oldest finished keys are forgotten first beyond this
IDEMPOTENCY_KEY_MAX_LENGTH = 255
HOLD_MAX_SECONDS = 600.0  # timeout_after_capture: the longest a request is held open
HOLD_POLL_SECONDS = 0.05
WEBHOOK_ATTEMPTS = 4
WEBHOOK_BACKOFF_SECONDS = 0.5
WEBHOOK_TIMEOUT_SECONDS = 5.0
DELIVERIES_KEPT = 1000
METADATA_MAX_KEYS = 50
METADATA_MAX_KEY_LENGTH = 40
METADATA_MAX_VALUE_LENGTH = 500
DECLINING_METHODS = frozenset({"pm_card_chargeDeclined", "pm_card_visa_chargeDeclined"})
ACTION_METHODS = frozenset({"pm_card_authenticationRequired", "pm_card_threeDSecure2Required"})
REFUND_REASONS = frozenset({"duplicate", "fraudulent", "requested_by_customer"})
RETURN_URL_MESSAGE = (
    "A `return_url` must be specified because this Payment Intent is configured to "
    "automatically accept the payment methods enabled in the Dashboard, some of which may "
    "require a full page redirect to succeed. If you do not want to accept redirect-based "
    "payment methods, set `automatic_payment_methods[enabled]` to `true` and "
    "`automatic_payment_methods[allow_redirects]` to `never` when creating Setup Intents and "
    "Payment Intents."
)

# Accepted parameters: a nested dict is an object, "map" any string map (metadata),
# "list" an array (expand[]), anything else a scalar.
Spec = Mapping[str, Any]
PI_CREATE: Spec = {
    "amount": "int",
    "currency": "str",
    "confirm": "bool",
    "payment_method": "str",
    "automatic_payment_methods": {"enabled": "bool", "allow_redirects": "str"},
    "metadata": "map",
    "description": "str",
    "return_url": "str",
    "expand": "list",
}
PI_CONFIRM: Spec = {"payment_method": "str", "return_url": "str", "expand": "list"}
REFUND_CREATE: Spec = {
    "payment_intent": "str",
    "amount": "int",
    "metadata": "map",
    "reason": "str",
    "expand": "list",
}
RETRIEVE: Spec = {"expand": "list"}
LIST: Spec = {"payment_intent": "str", "limit": "int", "starting_after": "str", "expand": "list"}
_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")


class StripeAPIError(Exception):
    """A refusal in Stripe's envelope; raised before anything changed, so nothing is saved."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error: dict[str, Any] = {"type": type, "message": message}
        if code is not None:
            self.error["code"] = code
            self.error["doc_url"] = f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"
        if param is not None:
            self.error["param"] = param


def _invalid(message: str, *, code: str | None = None, param: str | None = None) -> StripeAPIError:
    return StripeAPIError(HTTPStatus.BAD_REQUEST, message, code=code, param=param)


def parse_params(items: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Form or query items with bracket keys -> nested dicts; `key[]` and `key[0]` -> lists."""
    root: dict[str, Any] = {}
    for key, value in items:
        match = _KEY.match(key)
        if match is None:
            raise _invalid(f"Invalid parameter name: {key}", code="parameter_unknown", param=key)
        parts = [match.group(1), *re.findall(r"\[([^\[\]]*)\]", match.group(2))]
        node = root
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise _invalid(f"Invalid object: {key}", code="parameter_invalid_empty", param=key)
            node = child
        last = parts[-1]
        if last == "" or (last.isdigit() and len(parts) > 1 and parts[0] == "expand"):
            last = str(len(node))  # expand[] appends; expand[0] indexes
        if isinstance(node.get(last), dict):
            raise _invalid(f"Invalid object: {key}", param=key)
        node[last] = value
    if isinstance(root.get("expand"), dict):
        root["expand"] = [root["expand"][index] for index in sorted(root["expand"], key=int)]
    return root


def check_params(params: Mapping[str, Any], spec: Spec, prefix: str = "") -> None:
    """Stripe's `parameter_unknown` for anything the endpoint does not take."""
    for name, value in params.items():
        path = f"{prefix}[{name}]" if prefix else name
        kind = spec.get(name)
        if kind is None:
            raise _invalid(
                f"Received unknown parameter: {path}", code="parameter_unknown", param=path
            )
        if isinstance(kind, Mapping):
            if not isinstance(value, dict):
                raise _invalid(
                    f"Invalid object: {path}", code="parameter_invalid_string", param=path
                )
            check_params(value, kind, path)
        elif kind == "map":
            _check_metadata(value, path)
        elif kind == "list":
            if not isinstance(value, list):
                raise _invalid(f"Invalid array: {path}", param=path)
        elif not isinstance(value, str):
            raise _invalid(f"Invalid {kind}: {path} must be a scalar", param=path)


def _check_metadata(value: Any, path: str) -> None:
    if not isinstance(value, dict) or any(isinstance(item, dict) for item in value.values()):
        raise _invalid(f"Invalid object: {path}", param=path)
    if len(value) > METADATA_MAX_KEYS:
        raise _invalid(f"Too many metadata keys (max {METADATA_MAX_KEYS})", param=path)
    for key, item in value.items():
        if len(key) > METADATA_MAX_KEY_LENGTH or len(item) > METADATA_MAX_VALUE_LENGTH:
            raise _invalid(f"Metadata key or value too long: {key}", param=f"{path}[{key}]")


def _int(params: Mapping[str, Any], name: str, *, minimum: int | None = None) -> int | None:
    raw = params.get(name)
    if raw is None:
        return None
    if not re.fullmatch(r"-?\d+", raw):
        raise _invalid(f"Invalid integer: {raw}", code="parameter_invalid_integer", param=name)
    value = int(raw)
    if minimum is not None and value < minimum:
        raise _invalid(
            f"This value must be greater than or equal to {minimum}.",
            code="parameter_invalid_integer",
            param=name,
        )
    return value


def _bool(params: Mapping[str, Any], name: str, default: bool) -> bool:
    raw = params.get(name)
    if raw is None:
        return default
    if raw not in {"true", "false"}:
        raise _invalid(f"Invalid boolean: {raw}", code="parameter_invalid_boolean", param=name)
    return bool(raw == "true")


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def sign_payload(payload: str, secret: str, timestamp: int | None = None) -> str:
    """The `Stripe-Signature` header for a payload, computed as Stripe computes it."""
    stamp = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{stamp}.{payload}".encode(), hashlib.sha256).hexdigest()
    return f"t={stamp},v1={digest}"


@dataclass
class _Saved:
    """One idempotency key's request: its fingerprint, then (once finished) its answer."""

    endpoint: str
    fingerprint: str
    created: float
    request_id: str
    status: int | None = None  # None while the first request still runs
    body: bytes = b""


@dataclass
class _Call:
    """What an endpoint needs to know about the request it serves."""

    api_key: str
    idempotency_key: str | None
    params: dict[str, Any]
    path_id: str | None = None


@dataclass
class _Delivery:
    event_id: str
    type: str
    attempts: int = 0
    delivered: bool = False
    status_code: int | None = None
    error: str | None = None

    def snapshot(self) -> dict[str, Any]:
        return {
            "id": self.event_id,
            "type": self.type,
            "attempts": self.attempts,
            "delivered": self.delivered,
            "status_code": self.status_code,
            "error": self.error,
        }


@dataclass
class _Store:
    payment_intents: dict[str, dict[str, Any]] = field(default_factory=dict)
    charges: dict[str, dict[str, Any]] = field(default_factory=dict)
    refunds: dict[str, dict[str, Any]] = field(default_factory=dict)
    charges_by_pi: dict[str, list[str]] = field(default_factory=dict)
    refunds_by_pi: dict[str, list[str]] = field(default_factory=dict)


Endpoint = Callable[[_Call], tuple[int, dict[str, Any]]]


class SandboxProcessor:
    """The processor's state (objects, idempotency keys, webhooks) and its API operations."""

    def __init__(
        self,
        faults: FaultSwitch,
        *,
        api_key: str | None = None,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        webhook_attempts: int = WEBHOOK_ATTEMPTS,
        webhook_backoff_seconds: float = WEBHOOK_BACKOFF_SECONDS,
    ) -> None:
        self.faults = faults
        self.api_key = api_key  # None: any sk_test_ key is accepted
        self.webhook_url = webhook_url
        self.webhook_secret = webhook_secret
        self.webhook_attempts = webhook_attempts
        self.webhook_backoff_seconds = webhook_backoff_seconds
        self.store = _Store()
        self.deliveries: deque[_Delivery] = deque(maxlen=DELIVERIES_KEPT)
        self._saved: OrderedDict[tuple[str, str], _Saved] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._http: httpx.AsyncClient | None = None

    # --- lifecycle -------------------------------------------------------------------

    def reset(self) -> None:
        """Forget every object, key and delivery; cancel settlements and webhooks in flight."""
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()
        self.store = _Store()
        self._saved.clear()
        self.deliveries.clear()

    async def aclose(self) -> None:
        """Stop settlements and deliveries and close the webhook client (the sandbox stopping).

        Not tied to the HTTP server's lifespan: `down` stops that server, and a real
        processor keeps its ledger and settles pending payments while we cannot reach it.
        """
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- the HTTP pipeline -----------------------------------------------------------

    async def serve(
        self,
        request: Request,
        endpoint: Endpoint,
        spec: Spec,
        *,
        path_id: str | None = None,
        moves_money: bool = False,
    ) -> Response:
        """Auth, injected failures, parameters, idempotency, then the endpoint itself."""
        request_id = _new_id("req")
        try:
            api_key = self._authenticate(request)
            if self.faults.mode in {FaultMode.FAIL, FaultMode.FLAKY, FaultMode.DOWN}:
                status = await self.faults.gate()
                if status is not None:
                    raise StripeAPIError(
                        status,
                        f"sandbox processor: injected {self.faults.mode.value} fault",
                        type="api_error",
                    )
            if request.method == "POST":
                raw = (await request.body()).decode("utf-8", errors="replace")
            else:
                raw = request.url.query
            items = parse_qsl(raw, keep_blank_values=True)
            params = parse_params(items)
        except StripeAPIError as exc:
            return _error_response(exc, request_id)
        call = _Call(api_key, request.headers.get("idempotency-key"), params, path_id)
        if call.idempotency_key and len(call.idempotency_key) > IDEMPOTENCY_KEY_MAX_LENGTH:
            error = _invalid(
                f"Idempotency-Key is too long (max {IDEMPOTENCY_KEY_MAX_LENGTH} characters)."
            )
            return _error_response(error, request_id)
        if request.method != "POST" or not call.idempotency_key:
            return await self._execute(endpoint, spec, call, request_id)
        endpoint_name = f"{request.method} {request.url.path}"
        fingerprint = endpoint_name + "?" + "&".join(f"{k}={v}" for k, v in sorted(items))
        return await self._idempotent(
            request, endpoint, spec, call, request_id, endpoint_name, fingerprint, moves_money
        )

    async def _idempotent(
        self,
        request: Request,
        endpoint: Endpoint,
        spec: Spec,
        call: _Call,
        request_id: str,
        endpoint_name: str,
        fingerprint: str,
        moves_money: bool,
    ) -> Response:
        """Replay, refuse or run once: no await between the lookup and the reservation."""
        assert call.idempotency_key is not None
        slot = (call.api_key, call.idempotency_key)
        now = time.time()
        saved = self._saved.get(slot)
        if saved is not None and now - saved.created > IDEMPOTENCY_TTL_SECONDS:
            del self._saved[slot]
            saved = None
        if saved is not None:
            return self._answer_again(saved, call.idempotency_key, endpoint_name, fingerprint)
        saved = _Saved(endpoint_name, fingerprint, now, request_id)
        self._saved[slot] = saved
        self._forget_oldest()
        finished = False
        try:
            if self.faults.mode is FaultMode.SLOW:
                await self.faults.sleep(self.faults.delay_seconds)
            try:
                check_params(call.params, spec)
                status, body = endpoint(call)
            except StripeAPIError as exc:  # refused before anything changed: nothing saved
                return _error_response(exc, request_id)
            saved.status, saved.body = status, json.dumps(body).encode()
            finished = True
        finally:
            if not finished:
                self._saved.pop(slot, None)
        if moves_money and self.faults.mode is FaultMode.TIMEOUT_AFTER_CAPTURE:
            await self._hold(request)
        return _json_response(saved.status, saved.body, request_id)

    def _answer_again(
        self, saved: _Saved, key: str, endpoint_name: str, fingerprint: str
    ) -> Response:
        request_id = _new_id("req")
        if saved.status is None:
            error = StripeAPIError(
                HTTPStatus.CONFLICT,
                "There is currently another in-progress request using this Stripe-Idempotency-"
                "Key (that probably means you submitted twice, and the other request is still "
                "going through): " + key + ". Please try again later.",
                code="idempotency_key_in_use",
            )
            return _error_response(error, request_id)
        if saved.endpoint != endpoint_name:
            message = (
                "Keys for idempotent requests can only be used for the same endpoint they were "
                f"first used for ('{saved.endpoint}' vs '{endpoint_name}'). Try using a key "
                "other than '" + key + "' if you meant to execute a different request."
            )
            return _error_response(
                StripeAPIError(400, message, type="idempotency_error"), request_id
            )
        if saved.fingerprint != fingerprint:
            message = (
                "Keys for idempotent requests can only be used with the same parameters they "
                "were first used with. Try using a key other than '" + key + "' if you meant "
                "to execute a different request."
            )
            return _error_response(
                StripeAPIError(400, message, type="idempotency_error"), request_id
            )
        response = _json_response(saved.status, saved.body, request_id)
        response.headers["Idempotent-Replayed"] = "true"
        response.headers["Original-Request"] = saved.request_id
        return response

    async def _execute(
        self, endpoint: Endpoint, spec: Spec, call: _Call, request_id: str
    ) -> Response:
        if self.faults.mode is FaultMode.SLOW:
            await self.faults.sleep(self.faults.delay_seconds)
        try:
            check_params(call.params, spec)
            status, body = endpoint(call)
        except StripeAPIError as exc:
            return _error_response(exc, request_id)
        return _json_response(status, json.dumps(body).encode(), request_id)

    def _forget_oldest(self) -> None:
        while len(self._saved) > IDEMPOTENCY_CAPACITY:
            oldest = next(iter(self._saved.values()))
            if oldest.status is None:
                return
            self._saved.popitem(last=False)

    async def _hold(self, request: Request) -> None:
        """timeout_after_capture: answer nobody until the client hangs up (or the peer stops)."""
        interruptions = self.faults.interruptions
        deadline = time.monotonic() + HOLD_MAX_SECONDS
        while time.monotonic() < deadline and self.faults.interruptions == interruptions:
            if await request.is_disconnected():
                return
            await self.faults.sleep(HOLD_POLL_SECONDS)

    def _authenticate(self, request: Request) -> str:
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key:
            raise StripeAPIError(
                HTTPStatus.UNAUTHORIZED,
                "You did not provide an API key. You need to provide your API key in the "
                "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
                "YOUR_SECRET_KEY').",
            )
        if not key.startswith("sk_test_") or (self.api_key is not None and key != self.api_key):
            raise StripeAPIError(
                HTTPStatus.UNAUTHORIZED,
                f"Invalid API Key provided: {key[:8]}****{key[-4:]}",
                code="api_key_invalid" if key.startswith("sk_") else None,
            )
        return key

    # --- PaymentIntents --------------------------------------------------------------

    def create_payment_intent(self, call: _Call) -> tuple[int, dict[str, Any]]:
        params = call.params
        amount = _int(params, "amount", minimum=1)
        if amount is None:
            raise _invalid(
                "Missing required param: amount.", code="parameter_missing", param="amount"
            )
        currency = params.get("currency")
        if currency is None:
            raise _invalid(
                "Missing required param: currency.", code="parameter_missing", param="currency"
            )
        if not re.fullmatch(r"[A-Za-z]{3}", currency):
            raise _invalid(
                f"Invalid currency: {currency}", code="parameter_invalid_string", param="currency"
            )
        confirm = _bool(params, "confirm", False)
        apm = params.get("automatic_payment_methods")
        apm_view = None
        if apm is not None:
            enabled = _bool(apm, "enabled", False)
            redirects = apm.get("allow_redirects", "always")
            if redirects not in {"always", "never"}:
                raise _invalid(
                    f"Invalid automatic_payment_methods[allow_redirects]: {redirects}",
                    param="automatic_payment_methods[allow_redirects]",
                )
            apm_view = {"enabled": enabled, "allow_redirects": redirects}
        payment_method = params.get("payment_method") or None
        pi_id = _new_id("pi")
        pi: dict[str, Any] = {
            "id": pi_id,
            "object": "payment_intent",
            "amount": amount,
            "amount_capturable": 0,
            "amount_received": 0,
            "automatic_payment_methods": apm_view or {"enabled": True, "allow_redirects": "always"},
            "canceled_at": None,
            "cancellation_reason": None,
            "capture_method": "automatic",
            "client_secret": f"{pi_id}_secret_{secrets.token_hex(8)}",
            "confirmation_method": "automatic",
            "created": int(time.time()),
            "currency": currency.lower(),
            "description": params.get("description"),
            "last_payment_error": None,
            "latest_charge": None,
            "livemode": False,
            "metadata": dict(params.get("metadata", {})),
            "next_action": None,
            "payment_method": payment_method,
            "payment_method_types": ["card"],
            "return_url": params.get("return_url"),
            "status": "requires_confirmation" if payment_method else "requires_payment_method",
        }
        if confirm:
            self._check_confirmable(pi, params)
        self.store.payment_intents[pi_id] = pi
        if not confirm:
            return HTTPStatus.OK, self._pi_view(pi, params)
        return self._confirm(pi, call)

    def confirm_payment_intent(self, call: _Call) -> tuple[int, dict[str, Any]]:
        pi = self._find_pi(call.path_id)
        self._check_confirmable(pi, call.params)
        return self._confirm(pi, call)

    def retrieve_payment_intent(self, call: _Call) -> tuple[int, dict[str, Any]]:
        return HTTPStatus.OK, self._pi_view(self._find_pi(call.path_id), call.params)

    def _find_pi(self, pi_id: str | None) -> dict[str, Any]:
        pi = self.store.payment_intents.get(pi_id or "")
        if pi is None:
            raise StripeAPIError(
                HTTPStatus.NOT_FOUND,
                f"No such payment_intent: '{pi_id}'",
                code="resource_missing",
                param="intent",
            )
        return pi

    @staticmethod
    def _check_confirmable(pi: dict[str, Any], params: Mapping[str, Any]) -> None:
        """Stripe's refusals of a confirm, all decided before anything changes."""
        if pi["status"] not in {"requires_payment_method", "requires_confirmation"}:
            raise _invalid(
                "This PaymentIntent's status is "
                f"{pi['status']}, which does not allow it to be confirmed.",
                code="payment_intent_unexpected_state",
            )
        if not (params.get("payment_method") or pi["payment_method"]):
            raise _invalid(
                "You cannot confirm this PaymentIntent because it's missing a payment method.",
                code="payment_intent_unexpected_state",
                param="payment_method",
            )
        apm = pi["automatic_payment_methods"]
        return_url = params.get("return_url") or pi.get("return_url")
        if apm["enabled"] and apm["allow_redirects"] != "never" and not return_url:
            raise _invalid(RETURN_URL_MESSAGE, param="return_url")

    def _confirm(self, pi: dict[str, Any], call: _Call) -> tuple[int, dict[str, Any]]:
        """Charge: decline, processing (settles later), requires_action or success."""
        if call.params.get("payment_method"):
            pi["payment_method"] = call.params["payment_method"]
        if call.params.get("return_url"):
            pi["return_url"] = call.params["return_url"]
        outcome = self._charge_outcome(pi)
        if outcome == "decline":
            charge = self._new_charge(pi, succeeded=False)
            pi.update(
                status="requires_payment_method",
                latest_charge=charge["id"],
                payment_method=None,
                last_payment_error={
                    "type": "card_error",
                    "code": "card_declined",
                    "decline_code": "generic_decline",
                    "message": "Your card was declined.",
                    "charge": charge["id"],
                },
            )
            self._emit("payment_intent.payment_failed", pi, call.idempotency_key)
            error = {
                **pi["last_payment_error"],
                "doc_url": "https://stripe.com/docs/error-codes/card-declined",
                "payment_intent": self._pi_view(pi, {}),
                "request_log_url": None,
            }
            return HTTPStatus.PAYMENT_REQUIRED, {"error": error}
        if outcome == "pending":
            pi.update(status="processing", last_payment_error=None)
            self._spawn(self._settle_payment(pi["id"], self.faults.delay_seconds))
        elif outcome == "requires_action":
            pi.update(
                status="requires_action",
                next_action={"type": "use_stripe_sdk", "use_stripe_sdk": {}},
            )
        else:
            self._succeed(pi, call.idempotency_key)
        return HTTPStatus.OK, self._pi_view(pi, call.params)

    def _charge_outcome(self, pi: dict[str, Any]) -> str:
        if self.faults.mode is FaultMode.DECLINE:
            return "decline"
        if self.faults.mode is FaultMode.PENDING:
            return "pending"
        forced: str = pi["metadata"].get("simulate", "").lower()
        if forced in {"decline", "pending", "success"}:
            return forced
        if pi["payment_method"] in DECLINING_METHODS:
            return "decline"
        if pi["payment_method"] in ACTION_METHODS:
            return "requires_action"
        return "success"

    def _succeed(self, pi: dict[str, Any], idempotency_key: str | None) -> None:
        charge = self._new_charge(pi, succeeded=True)
        pi.update(
            status="succeeded",
            amount_received=pi["amount"],
            latest_charge=charge["id"],
            last_payment_error=None,
            next_action=None,
        )
        self._emit("payment_intent.succeeded", pi, idempotency_key)

    async def _settle_payment(self, pi_id: str, delay: float) -> None:
        await asyncio.sleep(delay)
        pi = self.store.payment_intents.get(pi_id)
        if pi is not None and pi["status"] == "processing":
            self._succeed(pi, None)

    def _new_charge(self, pi: dict[str, Any], *, succeeded: bool) -> dict[str, Any]:
        charge = {
            "id": _new_id("ch"),
            "object": "charge",
            "amount": pi["amount"],
            "amount_captured": pi["amount"] if succeeded else 0,
            "amount_refunded": 0,
            "captured": succeeded,
            "created": int(time.time()),
            "currency": pi["currency"],
            "failure_code": None if succeeded else "card_declined",
            "failure_message": None if succeeded else "Your card was declined.",
            "livemode": False,
            "metadata": dict(pi["metadata"]),
            "outcome": {
                "type": "authorized" if succeeded else "issuer_declined",
                "seller_message": "Payment complete." if succeeded else "The bank declined.",
            },
            "paid": succeeded,
            "payment_intent": pi["id"],
            "payment_method": pi["payment_method"],
            "refunded": False,
            "status": "succeeded" if succeeded else "failed",
        }
        self.store.charges[charge["id"]] = charge
        self.store.charges_by_pi.setdefault(pi["id"], []).append(charge["id"])
        return charge

    def _pi_view(self, pi: dict[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
        view = dict(pi)
        view.pop("return_url", None)
        if "latest_charge" in params.get("expand", ()) and pi["latest_charge"]:
            view["latest_charge"] = self.store.charges[pi["latest_charge"]]
        return view

    def list_charges(self, call: _Call) -> tuple[int, dict[str, Any]]:
        pi_id = call.params.get("payment_intent")
        ids = (
            self.store.charges_by_pi.get(pi_id, [])
            if pi_id is not None
            else list(self.store.charges)
        )
        return HTTPStatus.OK, self._page(ids, self.store.charges, call.params, "/v1/charges")

    # --- Refunds ---------------------------------------------------------------------

    def create_refund(self, call: _Call) -> tuple[int, dict[str, Any]]:
        params = call.params
        pi_id = params.get("payment_intent")
        if pi_id is None:
            raise _invalid(
                "Missing required param: payment_intent.",
                code="parameter_missing",
                param="payment_intent",
            )
        pi = self.store.payment_intents.get(pi_id)
        if pi is None:
            raise _invalid(
                f"No such payment_intent: '{pi_id}'",
                code="resource_missing",
                param="payment_intent",
            )
        charge = self.store.charges.get(pi["latest_charge"] or "")
        if pi["status"] != "succeeded" or charge is None or charge["status"] != "succeeded":
            raise _invalid(
                f"This PaymentIntent ({pi_id}) does not have a successful charge to refund.",
                code="charge_not_refundable",
                param="payment_intent",
            )
        reserved = sum(
            refund["amount"]
            for refund in self._refunds_of(pi_id)
            if refund["status"] in {"succeeded", "pending"}
        )
        remaining = charge["amount_captured"] - reserved
        if remaining <= 0:
            raise _invalid(
                f"Charge {charge['id']} has already been refunded.", code="charge_already_refunded"
            )
        amount = _int(params, "amount", minimum=1)
        if amount is None:
            amount = remaining
        if amount > remaining:
            raise _invalid(
                f"Refund amount ({amount}) is greater than unrefunded amount on charge "
                f"({remaining})",
                code="amount_too_large",
                param="amount",
            )
        reason = params.get("reason")
        if reason is not None and reason not in REFUND_REASONS:
            raise _invalid(
                "Invalid reason: must be one of duplicate, fraudulent, or requested_by_customer",
                code="parameter_invalid_string",
                param="reason",
            )
        status = {FaultMode.DECLINE: "failed", FaultMode.PENDING: "pending"}.get(
            self.faults.mode, "succeeded"
        )
        refund: dict[str, Any] = {
            "id": _new_id("re"),
            "object": "refund",
            "amount": amount,
            "charge": charge["id"],
            "created": int(time.time()),
            "currency": pi["currency"],
            "failure_reason": "declined" if status == "failed" else None,
            "metadata": dict(params.get("metadata", {})),
            "payment_intent": pi_id,
            "reason": reason,
            "status": status,
        }
        self.store.refunds[refund["id"]] = refund
        self.store.refunds_by_pi.setdefault(pi_id, []).append(refund["id"])
        if status == "succeeded":
            self._apply_refund(refund)
        self._emit("refund.created", refund, call.idempotency_key)
        if status == "failed":
            self._emit("refund.failed", refund, call.idempotency_key)
        if status == "pending":
            self._spawn(self._settle_refund(refund["id"], self.faults.delay_seconds))
        return HTTPStatus.OK, dict(refund)

    def retrieve_refund(self, call: _Call) -> tuple[int, dict[str, Any]]:
        refund = self.store.refunds.get(call.path_id or "")
        if refund is None:
            raise StripeAPIError(
                HTTPStatus.NOT_FOUND,
                f"No such refund: '{call.path_id}'",
                code="resource_missing",
                param="id",
            )
        return HTTPStatus.OK, dict(refund)

    def list_refunds(self, call: _Call) -> tuple[int, dict[str, Any]]:
        pi_id = call.params.get("payment_intent")
        ids = (
            self.store.refunds_by_pi.get(pi_id, [])
            if pi_id is not None
            else list(self.store.refunds)
        )
        return HTTPStatus.OK, self._page(ids, self.store.refunds, call.params, "/v1/refunds")

    def _refunds_of(self, pi_id: str) -> list[dict[str, Any]]:
        return [self.store.refunds[i] for i in self.store.refunds_by_pi.get(pi_id, [])]

    def _apply_refund(self, refund: dict[str, Any]) -> None:
        charge = self.store.charges[refund["charge"]]
        charge["amount_refunded"] += refund["amount"]
        charge["refunded"] = charge["amount_refunded"] >= charge["amount_captured"]

    async def _settle_refund(self, refund_id: str, delay: float) -> None:
        await asyncio.sleep(delay)
        refund = self.store.refunds.get(refund_id)
        if refund is not None and refund["status"] == "pending":
            refund["status"] = "succeeded"
            self._apply_refund(refund)
            self._emit("refund.updated", refund, None)

    @staticmethod
    def _page(
        ids: list[str], objects: Mapping[str, dict[str, Any]], params: Mapping[str, Any], url: str
    ) -> dict[str, Any]:
        """A Stripe list: newest first, `limit` (1..100, default 10), `starting_after`."""
        limit = _int(params, "limit", minimum=1) or 10
        if limit > 100:
            raise _invalid("This value must be less than or equal to 100.", param="limit")
        newest_first = list(reversed(ids))
        after = params.get("starting_after")
        if after is not None:
            if after not in newest_first:
                raise _invalid(
                    f"No such object: '{after}'", code="resource_missing", param="starting_after"
                )
            newest_first = newest_first[newest_first.index(after) + 1 :]
        page = newest_first[:limit]
        return {
            "object": "list",
            "data": [dict(objects[i]) for i in page],
            "has_more": len(newest_first) > limit,
            "url": url,
        }

    # --- ledger ----------------------------------------------------------------------

    def ledger(self, payment_id: str | None = None) -> dict[str, Any]:
        """Per PaymentIntent what was captured and refunded (minor units), for reconciliation."""
        entries = []
        for pi in self.store.payment_intents.values():
            if payment_id is not None and pi["metadata"].get("payment_id") != payment_id:
                continue
            charges = [self.store.charges[i] for i in self.store.charges_by_pi.get(pi["id"], [])]
            captured = [c for c in charges if c["status"] == "succeeded"]
            refunds = self._refunds_of(pi["id"])
            entries.append(
                {
                    "id": pi["id"],
                    "payment_id": pi["metadata"].get("payment_id"),
                    "metadata": pi["metadata"],
                    "amount": pi["amount"],
                    "currency": pi["currency"],
                    "status": pi["status"],
                    "captured": sum(c["amount_captured"] for c in captured),
                    "capture_count": len(captured),
                    "refunded": sum(r["amount"] for r in refunds if r["status"] == "succeeded"),
                    "refunds": [
                        {
                            "id": r["id"],
                            "amount": r["amount"],
                            "status": r["status"],
                            "metadata": r["metadata"],
                        }
                        for r in refunds
                    ],
                }
            )
        return {
            "count": len(entries),
            "captured_total": sum(entry["captured"] for entry in entries),
            "refunded_total": sum(entry["refunded"] for entry in entries),
            "payment_intents": entries,
        }

    def webhook_status(self) -> dict[str, Any]:
        """Where events go and what happened to the latest ones."""
        return {
            "url": self.webhook_url,
            "signing": self.webhook_secret is not None,
            "deliveries": [delivery.snapshot() for delivery in self.deliveries],
        }

    # --- webhooks --------------------------------------------------------------------

    def _emit(self, event_type: str, obj: dict[str, Any], idempotency_key: str | None) -> None:
        """Queue a signed event; nothing happens unless a URL and a secret are configured."""
        if not self.webhook_url or not self.webhook_secret:
            return
        event: dict[str, Any] = {
            "id": _new_id("evt"),
            "object": "event",
            "api_version": API_VERSION,
            "created": int(time.time()),
            "data": {
                "object": self._pi_view(obj, {}) if obj["object"] == "payment_intent" else dict(obj)
            },
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": idempotency_key},
            "type": event_type,
        }
        delivery = _Delivery(event["id"], event_type)
        self.deliveries.append(delivery)
        self._spawn(self._deliver(delivery, json.dumps(event)))

    async def _deliver(self, delivery: _Delivery, payload: str) -> None:
        """POST with a fresh signature per attempt; back off 0.5 s, 1 s, 2 s ... then give up."""
        assert self.webhook_url is not None and self.webhook_secret is not None
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=WEBHOOK_TIMEOUT_SECONDS)
        for attempt in range(self.webhook_attempts):
            if attempt:
                await asyncio.sleep(self.webhook_backoff_seconds * 2 ** (attempt - 1))
            delivery.attempts += 1
            headers = {
                "Content-Type": "application/json; charset=utf-8",
                "Stripe-Signature": sign_payload(payload, self.webhook_secret),
                "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
            }
            try:
                response = await self._http.post(self.webhook_url, content=payload, headers=headers)
            except httpx.HTTPError as exc:
                delivery.error = f"{type(exc).__name__}: {exc}"
                continue
            delivery.status_code = response.status_code
            if response.is_success:
                delivery.delivered, delivery.error = True, None
                return
            delivery.error = f"HTTP {response.status_code}"
        logger.warning(
            "sandbox processor: webhook %s (%s) not delivered after %d attempts: %s",
            delivery.event_id,
            delivery.type,
            delivery.attempts,
            delivery.error,
        )


def _json_response(status: int, body: bytes, request_id: str) -> Response:
    return Response(
        body,
        status_code=status,
        media_type="application/json",
        headers={"Request-Id": request_id, "Stripe-Version": API_VERSION},
    )


def _error_response(error: StripeAPIError, request_id: str) -> Response:
    body = {"error": {**error.error, "request_log_url": None}}
    return _json_response(error.status, json.dumps(body).encode(), request_id)


def create_processor_app(processor: SandboxProcessor) -> FastAPI:
    """The Stripe stand-in's HTTP face; `/health` and `/_sandbox/faults` need no API key."""

    app = FastAPI(
        title="Sandbox payment processor",
        summary="The Stripe API subset the Payment Service's Stripe adapter uses.",
        version="1.0.0",
    )
    app.include_router(create_fault_router(processor.faults, "processor"))

    @app.exception_handler(StarletteHTTPException)
    async def not_found(request: Request, exc: StarletteHTTPException) -> Response:
        """Unknown URLs answer in Stripe's envelope, as Stripe does."""
        error = StripeAPIError(
            exc.status_code,
            f"Unrecognized request URL ({request.method}: {request.url.path}).",
        )
        return _error_response(error, _new_id("req"))

    @app.post("/v1/payment_intents", tags=["payment intents"])
    async def create_payment_intent(request: Request) -> Response:
        """Create (and with confirm=true, charge) a PaymentIntent."""
        return await processor.serve(
            request, processor.create_payment_intent, PI_CREATE, moves_money=True
        )

    @app.post("/v1/payment_intents/{intent}/confirm", tags=["payment intents"])
    async def confirm_payment_intent(intent: str, request: Request) -> Response:
        """Charge a PaymentIntent that was created unconfirmed (or declined before)."""
        return await processor.serve(
            request, processor.confirm_payment_intent, PI_CONFIRM, path_id=intent, moves_money=True
        )

    @app.get("/v1/payment_intents/{intent}", tags=["payment intents"])
    async def retrieve_payment_intent(intent: str, request: Request) -> Response:
        """A PaymentIntent's current state."""
        return await processor.serve(
            request, processor.retrieve_payment_intent, RETRIEVE, path_id=intent
        )

    @app.get("/v1/charges", tags=["charges"])
    async def list_charges(request: Request) -> Response:
        """Charges, e.g. of one PaymentIntent (`payment_intent=`)."""
        return await processor.serve(request, processor.list_charges, LIST)

    @app.post("/v1/refunds", tags=["refunds"])
    async def create_refund(request: Request) -> Response:
        """Refund all or part of a PaymentIntent's successful charge."""
        return await processor.serve(
            request, processor.create_refund, REFUND_CREATE, moves_money=True
        )

    @app.get("/v1/refunds/{refund}", tags=["refunds"])
    async def retrieve_refund(refund: str, request: Request) -> Response:
        """A refund's current state."""
        return await processor.serve(request, processor.retrieve_refund, RETRIEVE, path_id=refund)

    @app.get("/v1/refunds", tags=["refunds"])
    async def list_refunds(request: Request) -> Response:
        """Refunds, e.g. of one PaymentIntent (`payment_intent=`)."""
        return await processor.serve(request, processor.list_refunds, LIST)

    @app.get("/health", tags=["sandbox control"])
    async def health() -> dict[str, str]:
        """Liveness for scripts waiting on the sandbox."""
        return {"status": "UP"}

    return app
