"""Outbox dispatcher: delivers notification messages at least once, never concurrently.

One batch (`run_once`) is three steps, none of which holds a transaction across HTTP:

1. claim: one statement (autocommit: no BEGIN/COMMIT) leases up to
   OUTBOX_BATCH_SIZE due PENDING rows (`FOR UPDATE SKIP LOCKED`, then
   `next_attempt_at = now() + lease`) and counts the PENDING ones for the
   `outbox_pending` gauge;
2. deliver: POST each message (a bounded number at once) with its global
   `event_id` as `Idempotency-Key` and `webhook-id` (signed when
   NOTIFICATION_SIGNING_SECRET is set), in a span that continues the trace the
   message was enqueued in; a delivery only starts while enough of the
   lease is left for it to finish, so no other replica can claim a message that
   is still on the wire;
3. mark: one statement per outcome records DELIVERED, or failed attempts retried
   after an exponential backoff with full jitter, or FAILED after
   OUTBOX_MAX_ATTEMPTS (the row stays, with `last_error`, for people to see).

A batch that delivers everything thus costs two round trips, an idle poll one.

A crash between 2 and 3 leaves the rows leased; they come due again when the
lease ends and are sent again -- at-least-once, which the idempotency key and
`event_id` let the receiver absorb.

`running()` polls every OUTBOX_POLL_INTERVAL_SECONDS (at once again after a full
batch that delivered something). Nothing wakes it when a charge commits: waiting
for the next poll is what lets one claim carry many messages under load. Database
and delivery failures are logged and backed off, never raised out of the loop, and
never touch a payment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

import httpx
from opentelemetry import trace
from sqlalchemy import URL
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from payment_service.clients.notification import NotificationClient, NotificationDeliveryError
from payment_service.models.enums import OutboxStatus
from payment_service.observability import (
    OUTBOX_DELIVERED,
    OUTBOX_DELIVERY_FAILURES,
    OUTBOX_PENDING,
)
from payment_service.repositories.outbox import ClaimedMessage, FailedAttempt, OutboxRepository
from payment_service.settings import Settings
from payment_service.signals import stop_on_signals
from payment_service.tracing import context_from_traceparent, tracer

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger(__name__)

DEFAULT_CONCURRENCY = 10
LEASE_MARGIN_SECONDS = 5.0
"""Lease time beyond the last possible delivery: covers marking and clock drift."""
MAX_LOOP_BACKOFF_SECONDS = 30.0
"""Longest pause of the loop after consecutive database errors."""
MAX_SHUTDOWN_WAIT_SECONDS = 10.0
"""Longest wait for the in-flight batch when the dispatcher stops."""
_AUTOCOMMIT = {"isolation_level": "AUTOCOMMIT"}


def backoff_delay(
    attempt: int, base: float, cap: float, *, rng: random.Random | None = None
) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**(attempt-1))].

    `attempt` counts failures so far (1 after the first). Full jitter spreads
    the retries of many messages that failed together (a peer outage) instead of
    sending them back in one burst.
    """
    exponent = min(max(attempt, 1) - 1, 64)  # 2**64 * any sane base is past every cap
    ceiling = min(cap, base * 2.0**exponent)
    return (rng or random).uniform(0.0, ceiling)


class _Outcome(Enum):
    DELIVERED = "delivered"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True)
class _Result:
    message: ClaimedMessage
    outcome: _Outcome
    error: str | None = None


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What one `run_once` did."""

    claimed: int
    delivered: int
    failed: int
    released: int


class OutboxDispatcher:
    """Drains the notification outbox; `running()` in the app/worker, `run_once()` in tests."""

    def __init__(
        self,
        settings: Settings,
        session_factory: async_sessionmaker[AsyncSession],
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self._settings = settings
        self._session_factory = session_factory
        self._transport = transport
        self._concurrency = min(concurrency, settings.outbox_batch_size)
        self._client: NotificationClient | None = None
        self._stopping: asyncio.Event | None = None
        self._rng = random.Random()
        self._tracer_provider = tracer_provider
        self._tracer = tracer(tracer_provider)

    @property
    def lease_seconds(self) -> float:
        """How long a claim keeps a batch from other dispatchers: every round of deliveries
        at the full timeout, plus a margin for marking."""
        rounds = math.ceil(self._settings.outbox_batch_size / self._concurrency)
        return rounds * self._settings.notification_timeout_seconds + LEASE_MARGIN_SECONDS

    @property
    def shutdown_timeout_seconds(self) -> float:
        """How long stopping waits for the in-flight batch before cancelling it.

        Capped so a shutdown fits a container's grace period; what a cancelled
        batch had claimed is delivered again once its lease ends.
        """
        return min(self.lease_seconds, MAX_SHUTDOWN_WAIT_SECONDS)

    def _new_client(self) -> NotificationClient:
        return NotificationClient(
            self._settings, transport=self._transport, tracer_provider=self._tracer_provider
        )

    # -- one batch ------------------------------------------------------------

    async def run_once(self) -> int:
        """Claim, deliver and mark one batch; returns how many messages were delivered.

        Database errors propagate (the loop in `running()` catches them); delivery
        failures never do, they are recorded on the rows.
        """
        return (await self.run_batch()).delivered

    async def run_batch(self) -> BatchResult:
        """`run_once` with the full account of the batch."""
        if self._client is not None:
            return await self._run_batch(self._client)
        async with self._new_client() as client:
            return await self._run_batch(client)

    async def _run_batch(self, client: NotificationClient) -> BatchResult:
        loop = asyncio.get_running_loop()
        lease = self.lease_seconds
        # Taken before the claim's transaction starts, so the database's lease
        # (counted from its own now()) ends no earlier than this local estimate.
        # A delivery may start only if it ends, at the latest, half a margin
        # before the lease: the rest is for marking and clock drift.
        deadline = loop.time() + lease - LEASE_MARGIN_SECONDS / 2
        async with self._outbox() as outbox:
            claim = await outbox.claim(self._settings.outbox_batch_size, lease)
        OUTBOX_PENDING.set(claim.pending)
        messages = claim.messages
        if not messages:
            return BatchResult(0, 0, 0, 0)

        semaphore = asyncio.Semaphore(self._concurrency)

        async def deliver(message: ClaimedMessage) -> _Result:
            async with semaphore:
                if loop.time() + self._settings.notification_timeout_seconds > deadline:
                    return _Result(message, _Outcome.SKIPPED)
                return await self._deliver(client, message)

        results = await asyncio.gather(*(deliver(message) for message in messages))
        return await self._record(results)

    async def _deliver(self, client: NotificationClient, message: ClaimedMessage) -> _Result:
        request_id = message.payload.get("request_id")
        if not isinstance(request_id, str) or not request_id:
            request_id = uuid.uuid4().hex
        # A child of the span the message was enqueued in: the delivery joins the charge's
        # trace (and the httpx span inside it forwards `traceparent` to the receiver).
        with self._tracer.start_as_current_span(
            "outbox deliver",
            context=context_from_traceparent(message.traceparent),
            kind=trace.SpanKind.PRODUCER,
            attributes={
                "messaging.system": "payment-service.outbox",
                "messaging.message.id": str(message.event_id),
                "outbox.message_id": message.id,
                "outbox.message_type": message.message_type,
                "outbox.attempt": message.attempts + 1,
            },
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            result = await self._send(client, message, request_id)
            if result.outcome is _Outcome.FAILED:
                span.set_status(trace.StatusCode.ERROR, result.error)
            return result

    async def _send(
        self, client: NotificationClient, message: ClaimedMessage, request_id: str
    ) -> _Result:
        try:
            await client.send(message.event_id, message.id, message.payload, request_id)
        except NotificationDeliveryError as exc:
            OUTBOX_DELIVERY_FAILURES.inc()
            log.warning(
                "notification delivery failed",
                extra={
                    "message_id": message.id,
                    "event_id": str(message.event_id),
                    "message_type": message.message_type,
                    "payment_id": message.payment_id,
                    "attempt": message.attempts + 1,
                    "error": exc.detail,
                    "request_id": request_id,
                },
            )
            return _Result(message, _Outcome.FAILED, exc.detail)
        except Exception as exc:  # a bug must not strand the batch's other messages
            OUTBOX_DELIVERY_FAILURES.inc()
            log.exception(
                "notification delivery crashed",
                extra={"message_id": message.id, "request_id": request_id},
            )
            return _Result(message, _Outcome.FAILED, f"unexpected {type(exc).__name__}")
        OUTBOX_DELIVERED.inc()
        log.debug(
            "notification delivered",
            extra={
                "message_id": message.id,
                "message_type": message.message_type,
                "payment_id": message.payment_id,
                "attempt": message.attempts + 1,
                "request_id": request_id,
            },
        )
        return _Result(message, _Outcome.DELIVERED)

    async def _record(self, results: list[_Result]) -> BatchResult:
        settings = self._settings
        delivered = [r.message for r in results if r.outcome is _Outcome.DELIVERED]
        skipped = [r.message for r in results if r.outcome is _Outcome.SKIPPED]
        failures = [
            FailedAttempt(
                r.message,
                r.error or "delivery failed",
                backoff_delay(
                    r.message.attempts + 1,
                    settings.outbox_backoff_base_seconds,
                    settings.outbox_backoff_max_seconds,
                    rng=self._rng,
                ),
            )
            for r in results
            if r.outcome is _Outcome.FAILED
        ]
        # One statement per kind of outcome (usually only the first), each atomic on its own:
        # a crash between them leaves the rest leased, to be sent again when the lease ends.
        async with self._outbox() as outbox:
            await outbox.mark_delivered(*delivered)
            statuses = await outbox.mark_failed_attempts(
                failures, max_attempts=settings.outbox_max_attempts
            )
            await outbox.release_all(skipped)
        for failure in failures:
            message = failure.message
            status = statuses.get(message.id)
            if status == OutboxStatus.FAILED.value:
                log.error(
                    "notification given up after max attempts",
                    extra={
                        "message_id": message.id,
                        "payment_id": message.payment_id,
                        "attempts": message.attempts + 1,
                        "error": failure.error,
                    },
                )
            elif status is None:
                log.warning(
                    "outbox lease lost before the failure was recorded",
                    extra={"message_id": message.id},
                )
        batch = BatchResult(len(results), len(delivered), len(failures), len(skipped))
        log.info(
            "outbox batch",
            extra={
                "claimed": batch.claimed,
                "delivered": batch.delivered,
                "failed": batch.failed,
                "released": batch.released,
            },
        )
        return batch

    @contextlib.asynccontextmanager
    async def _outbox(self) -> AsyncIterator[OutboxRepository]:
        """The outbox on an AUTOCOMMIT connection: every repository call is one statement,
        atomic by itself, so no BEGIN/COMMIT round trips are spent around it."""
        async with self._session_factory() as session:
            connection = await session.connection(execution_options=_AUTOCOMMIT)
            yield OutboxRepository(connection)

    # -- the loop -------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[OutboxDispatcher]:
        """Deliver in a background task; on exit finish the in-flight batch (bounded), then stop."""
        if self._stopping is not None:
            raise RuntimeError("this OutboxDispatcher is already running")
        self._stopping = asyncio.Event()
        async with self._new_client() as client:
            self._client = client
            task = asyncio.create_task(self._loop(client, self._stopping), name="outbox-dispatcher")
            log.info(
                "outbox dispatcher started",
                extra={
                    "batch_size": self._settings.outbox_batch_size,
                    "concurrency": self._concurrency,
                    "lease_seconds": self.lease_seconds,
                },
            )
            try:
                yield self
            finally:
                self._stopping.set()
                await self._stop(task)
                self._client = None
                self._stopping = None
                log.info("outbox dispatcher stopped")

    async def _stop(self, task: asyncio.Task[None]) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(task), self.shutdown_timeout_seconds)
        except TimeoutError:
            log.warning(
                "outbox dispatcher did not finish its batch in time; cancelling it "
                "(its messages are sent again when their lease ends)"
            )
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        except asyncio.CancelledError:
            # We are being cancelled ourselves: do not leave the loop running behind us.
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise
        except Exception:  # pragma: no cover - _loop catches everything it can
            log.exception("outbox dispatcher ended with an error")

    async def _loop(self, client: NotificationClient, stopping: asyncio.Event) -> None:
        settings = self._settings
        poll = settings.outbox_poll_interval_seconds
        errors = 0
        while not stopping.is_set():
            try:
                batch = await self._run_batch(client)
            except Exception as exc:
                errors += 1
                cap = max(poll, MAX_LOOP_BACKOFF_SECONDS)
                delay = max(poll / 2, backoff_delay(errors, poll, cap, rng=self._rng))
                log.warning(
                    "outbox batch failed; retrying",
                    extra={
                        "error": _describe(exc),
                        "consecutive_errors": errors,
                        "retry_in_seconds": round(delay, 3),
                    },
                )
            else:
                errors = 0
                if batch.claimed >= settings.outbox_batch_size and batch.delivered > 0:
                    continue  # more may be due right now
                delay = poll
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), delay)


def _describe(exc: BaseException) -> str:
    """The exception's type and first line, short enough for a log field."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


async def run_worker(settings: Settings, url: URL) -> None:
    """`payment-service worker`: the dispatcher and the reconciler until SIGINT or SIGTERM."""
    from payment_service import tracing
    from payment_service.clients.gateway import build_gateway
    from payment_service.db import create_engine, create_session_factory
    from payment_service.worker.reconciler import Reconciler

    provider = tracing.provider_from_settings(settings)
    if provider is not None:
        tracing.enable(provider)
    engine = create_engine(settings, url)
    if provider is not None:
        tracing.instrument_engine(engine, provider)
    gateway = build_gateway(settings, tracer_provider=provider)
    try:
        session_factory = create_session_factory(engine)
        dispatcher = OutboxDispatcher(settings, session_factory, tracer_provider=provider)
        async with contextlib.AsyncExitStack() as stack:
            stop = await stack.enter_async_context(stop_on_signals())
            await stack.enter_async_context(dispatcher.running())
            if settings.reconcile_enabled:
                reconciler = Reconciler(settings, session_factory, gateway)
                await stack.enter_async_context(reconciler.running())
            log.info("worker running (outbox, reconciler); stop with SIGINT or SIGTERM")
            await stop.wait()
            log.info("worker stopping")
    finally:
        await gateway.aclose()
        await engine.dispose()
        if provider is not None:
            provider.shutdown()  # exports what is still buffered
