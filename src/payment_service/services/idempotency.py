"""Idempotent requests: one outcome per (operation, client, key), replayed on retries.

A key is claimed with a lease before any work; the answer is stored in the same
transaction as the work it describes. A retry with the same key and body gets
the stored answer (`Idempotent-Replayed: true`), with another body a 422, and
while the first is still in flight it waits briefly and then gets a 409 with
`Retry-After`. A lease left by a crashed process expires and is taken over.
Answers that changed nothing are not stored: the key is released.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from payment_service.db import SessionFactory
from payment_service.errors import BadRequestError, ConflictError, UnprocessableError
from payment_service.jsonutil import dumps
from payment_service.models.enums import IdempotencyState
from payment_service.observability import IDEMPOTENT_REPLAYS, mask_key
from payment_service.repositories.idempotency import IdempotencyRepository, KeyRow
from payment_service.services.transitions import Answer
from payment_service.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_CLIENT = "default"
REPLAY_HEADER = "Idempotent-Replayed"


class IdempotencyKeyMissingError(BadRequestError):
    type = "idempotency-key-missing"
    title = "Idempotency Key Required"


class IdempotencyKeyMismatchError(BadRequestError):
    type = "idempotency-key-mismatch"
    title = "Conflicting Idempotency Keys"


class IdempotencyKeyReusedError(UnprocessableError):
    type = "idempotency-key-reused"
    title = "Idempotency Key Reused"


class IdempotencyInFlightError(ConflictError):
    type = "idempotency-in-flight"
    title = "Request In Progress"


class LeaseLostError(ConflictError):
    type = "idempotency-lease-lost"
    title = "Request Taken Over"


@dataclass(frozen=True, slots=True)
class Claim:
    """We hold the key: do the work, then `complete` (or `release`).

    `payment_id` / `refund_id` are set when an earlier attempt with this key already
    created its row: the work is then resumed, never started again.
    """

    key_id: int
    token: str
    payment_id: int | None = None
    refund_id: int | None = None


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """The answer of a finished request with this key."""

    status_code: int
    body: bytes
    replayed: bool = False


def resolve_key(body_key: str | None, header_key: str | None) -> str:
    """The key from the body or the `Idempotency-Key` header; both and different is a 400."""
    if body_key is not None and header_key is not None and body_key != header_key:
        raise IdempotencyKeyMismatchError(
            "idempotency_key in the body and the Idempotency-Key header differ."
        )
    key = body_key if body_key is not None else header_key
    if key is None or not key.strip():
        raise IdempotencyKeyMissingError(
            "Send an idempotency_key in the body or an Idempotency-Key header."
        )
    if len(key) > 255:
        raise IdempotencyKeyMissingError("The idempotency key must be 1..255 characters.")
    return key


def fingerprint(payload: dict[str, Any]) -> str:
    """SHA-256 of the canonical request (the key itself excluded by the caller)."""
    canonical = {k: v for k, v in sorted(payload.items()) if v is not None}
    return hashlib.sha256(dumps(canonical)).hexdigest()


class Idempotency:
    """Claims, completes and releases keys of one operation."""

    def __init__(self, settings: Settings, operation: str, client_id: str = DEFAULT_CLIENT):
        self.operation = operation
        self.client_id = client_id
        self.lease = timedelta(seconds=settings.idempotency_lease_seconds)
        self.ttl = timedelta(hours=settings.idempotency_ttl_hours)
        self.wait_seconds = settings.idempotency_wait_seconds

    async def try_claim(
        self, session: AsyncSession, key: str, request_fingerprint: str
    ) -> Claim | StoredResponse | None:
        """One attempt in the caller's transaction; None means another request holds the key."""
        repo = IdempotencyRepository(session)
        token = str(uuid.uuid4())
        scope = {"operation": self.operation, "client_id": self.client_id, "key": key}
        key_id = await repo.insert_if_absent(
            **scope, fingerprint=request_fingerprint, token=token, lease=self.lease, ttl=self.ttl
        )
        if key_id is not None:
            return Claim(key_id, token)
        row = await repo.find(operation=self.operation, client_id=self.client_id, key=key)
        stored = self.replay_of(row, request_fingerprint)
        if stored is not None:
            return stored
        row = await repo.find(**scope, lock=True)
        if row is None:  # deleted between our insert and select: try again
            return None
        if row.expires_at <= row.db_now:
            await repo.take_over(
                row.id,
                fingerprint=request_fingerprint,
                token=token,
                lease=self.lease,
                ttl=self.ttl,
            )
            return Claim(row.id, token)
        if row.fingerprint != request_fingerprint or row.state == IdempotencyState.COMPLETED:
            return self._finished(row, request_fingerprint)
        if row.locked_until is None or row.locked_until <= row.db_now:
            log.warning(
                "taking over an idempotency key whose lease expired",
                extra={"operation": self.operation, "key": mask_key(key)},
            )
            await repo.take_over(
                row.id, fingerprint=request_fingerprint, token=token, lease=self.lease, ttl=None
            )
            return Claim(row.id, token, row.payment_id, row.refund_id)
        return None

    def replay_of(self, row: KeyRow | None, request_fingerprint: str) -> StoredResponse | None:
        """The stored answer of a finished key read without a lock (a 422 for another body);
        None when the key is absent, expired or still in flight.

        A finished key never changes again (until it expires), so retries of one key need
        not queue behind each other for its row lock.
        """
        if (
            row is not None
            and row.expires_at > row.db_now
            and (
                row.state == IdempotencyState.COMPLETED.value
                or row.fingerprint != request_fingerprint
            )
        ):
            return self._finished(row, request_fingerprint)
        return None

    def _finished(self, row: KeyRow, request_fingerprint: str) -> StoredResponse:
        """A key that is done, or taken by another request: replay it or refuse (422)."""
        if row.fingerprint != request_fingerprint:
            raise IdempotencyKeyReusedError(
                "This idempotency key was used with a different request; use a new key."
            )
        IDEMPOTENT_REPLAYS.labels(operation=self.operation).inc()
        assert row.response_status is not None and row.response_body is not None
        return StoredResponse(row.response_status, row.response_body.encode(), replayed=True)

    async def claim(
        self,
        session_factory: SessionFactory,
        key: str,
        request_fingerprint: str,
        precheck: Callable[[AsyncSession], Awaitable[None]] | None = None,
    ) -> Claim | StoredResponse:
        """Claim in short transactions of our own, waiting a little for an in-flight twin.

        `precheck` runs in the claiming transaction once a fresh key is ours (not when it
        resumes a row an earlier attempt created); if it raises, the claim rolls back with
        it (nothing stored, the key stays free).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_seconds
        pause = 0.02
        while True:
            async with session_factory() as session, session.begin():
                outcome = await self.try_claim(session, key, request_fingerprint)
                if (
                    isinstance(outcome, Claim)
                    and precheck is not None
                    and outcome.payment_id is None
                    and outcome.refund_id is None
                ):
                    await precheck(session)
            if outcome is not None:
                return outcome
            if loop.time() >= deadline:
                raise self.in_flight()
            await asyncio.sleep(pause)
            pause = min(pause * 1.5, 0.25)

    def in_flight(self) -> IdempotencyInFlightError:
        return IdempotencyInFlightError(
            "A request with this idempotency key is still being processed; retry shortly.",
            headers={"Retry-After": "1"},
        )

    async def bind(
        self, session: AsyncSession, claim: Claim, *, payment_id: int, refund_id: int | None = None
    ) -> None:
        """Tie the key to the row it created, in that row's transaction: from then on no
        failure releases the key, and a retry resumes that row."""
        if not await IdempotencyRepository(session).bind(
            claim.key_id, claim.token, payment_id=payment_id, refund_id=refund_id
        ):
            raise self.lease_lost()

    async def complete_bound(
        self,
        session: AsyncSession,
        *,
        status_code: int,
        body: bytes,
        payment_id: int,
        refund_id: int | None = None,
    ) -> None:
        """Store the answer on the keys bound to this payment or refund (see the repository)."""
        await IdempotencyRepository(session).complete_bound(
            operation=self.operation,
            status=status_code,
            body=body.decode("utf-8"),
            payment_id=payment_id,
            refund_id=refund_id,
        )

    async def answer_recorded(
        self,
        session: AsyncSession,
        claim: Claim,
        render: Callable[[], Answer],
        *,
        payment_id: int,
        refund_id: int | None = None,
    ) -> Answer:
        """The answer for work another finisher (a webhook, the reconciler) recorded first:
        the one it stored on our key, so the caller and every replay see the same bytes;
        else `render()`'s, stored now."""
        stored = await IdempotencyRepository(session).stored_answer(claim.key_id)
        if stored is not None:
            return Answer(stored[0], stored[1].encode("utf-8"))
        answer = render()
        await self.complete_bound(
            session,
            status_code=answer.status_code,
            body=answer.body,
            payment_id=payment_id,
            refund_id=refund_id,
        )
        return answer

    async def end_lease(self, session_factory: SessionFactory, claim: Claim) -> None:
        """Best effort: a retry may resume at once; else the lease simply runs out."""
        try:
            async with session_factory() as session, session.begin():
                await IdempotencyRepository(session).end_lease(claim.key_id, claim.token)
        except Exception:
            log.warning("could not end an idempotency lease early; it will expire")

    def lease_lost(self) -> LeaseLostError:
        return LeaseLostError(
            "The request took longer than its lease and was taken over; retry to get the outcome.",
            headers={"Retry-After": "1"},
        )

    async def release(self, session_factory: SessionFactory, claim: Claim) -> None:
        """Forget the key (best effort: an expired lease is recoverable anyway)."""
        try:
            async with session_factory() as session, session.begin():
                await IdempotencyRepository(session).release(claim.key_id, claim.token)
        except Exception:
            log.exception("could not release an idempotency key; its lease will expire")


async def purge_expired(session: AsyncSession) -> int:
    """Delete keys past their TTL (CLI `purge-idempotency-keys`, a CronJob in k8s)."""
    return await IdempotencyRepository(session).purge_expired()
