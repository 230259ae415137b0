"""The reconciler: finishes what a crash, an outage or a silent processor left behind.

Every `RECONCILE_INTERVAL_SECONDS` it leases PROCESSING and PENDING payments, and
PROCESSING refunds, untouched for `RECONCILE_AFTER_SECONDS` (`FOR UPDATE SKIP
LOCKED` in one short transaction that bumps `updated_at`, so replicas take
disjoint rows and no transaction is open during the processor call), asks the
processor about each with the row's own gateway idempotency key, and records the
answer through `services/transitions.py`, exactly as a request or a webhook would.
A PROCESSING payment whose request never reached the processor is charged then:
the caller asked for it and was told to retry (503), and the row holds its intent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from payment_service.clients.gateway import (
    GatewayUnavailableError,
    PaymentGateway,
)
from payment_service.db import SessionFactory
from payment_service.observability import RECONCILER_RUNS
from payment_service.repositories.payment import PaymentRepository
from payment_service.services.charge import ask_processor
from payment_service.services.refunds import ask_processor_to_refund
from payment_service.services.transitions import finish_charge, finish_refund
from payment_service.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ReconcileResult:
    examined: int
    finished: int
    unavailable: int


class Reconciler:
    def __init__(
        self, settings: Settings, session_factory: SessionFactory, gateway: PaymentGateway
    ) -> None:
        self.settings = settings
        self.session_factory = session_factory
        self.gateway = gateway

    async def run_once(self, *, older_than: float | None = None) -> ReconcileResult:
        """One pass over payments and refunds; `older_than` overrides the setting (tests, CLI)."""
        after = self.settings.reconcile_after_seconds if older_than is None else older_than
        limit = self.settings.reconcile_batch_size
        async with self.session_factory() as session, session.begin():
            repo = PaymentRepository(session)
            payments = await repo.unsettled_payments(older_than=after, limit=limit)
            refunds = await repo.unsettled_refunds(older_than=after, limit=limit)
            owners = await repo.get_many({refund.payment_id for refund in refunds})
        examined = finished = unavailable = 0
        for payment in payments:
            examined += 1
            try:
                result = await ask_processor(self.gateway, payment, lookup=True)
            except GatewayUnavailableError as exc:
                unavailable += 1
                log.warning(
                    "reconciler: processor unavailable",
                    extra={"payment_id": payment.id, "error": exc.detail},
                )
                continue
            async with self.session_factory() as session, session.begin():
                _, moved = await finish_charge(session, payment.id, result, source="reconciler")
            finished += moved
        for refund in refunds:
            examined += 1
            try:
                refund_result = await ask_processor_to_refund(
                    self.gateway, owners[refund.payment_id], refund, lookup=True
                )
            except GatewayUnavailableError as exc:
                unavailable += 1
                log.warning(
                    "reconciler: processor unavailable",
                    extra={"refund_id": refund.id, "error": exc.detail},
                )
                continue
            async with self.session_factory() as session, session.begin():
                _, _, moved = await finish_refund(
                    session, refund.id, refund_result, source="reconciler"
                )
            finished += moved
        RECONCILER_RUNS.labels(outcome="finished").inc(finished)
        RECONCILER_RUNS.labels(outcome="unavailable").inc(unavailable)
        if examined:
            log.info(
                "reconciler pass",
                extra={"examined": examined, "finished": finished, "unavailable": unavailable},
            )
        return ReconcileResult(examined, finished, unavailable)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Reconciler]:
        """Reconcile in a background task until the context exits."""
        stopping = asyncio.Event()
        task = asyncio.create_task(self._loop(stopping), name="reconciler")
        try:
            yield self
        finally:
            stopping.set()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self, stopping: asyncio.Event) -> None:
        interval = self.settings.reconcile_interval_seconds
        while not stopping.is_set():
            try:
                await self.run_once()
            except Exception as exc:  # the database may be down: try again next round
                log.warning(
                    "reconciler pass failed; retrying",
                    extra={"error": type(exc).__name__},
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), interval)
