"""tx 3 of a charge in one statement, for the caller that holds its payment as PROCESSING.

    WITH moved   AS (UPDATE payments SET status = ..  WHERE id = :id AND status = 'PROCESSING'
                     RETURNING ..),
         event   AS (INSERT INTO payment_events .. SELECT .. FROM moved),
         journal AS (INSERT INTO ledger_journals .. SELECT .. FROM moved WHERE :post_journal
                     ON CONFLICT DO NOTHING RETURNING id),
         lines   AS (INSERT INTO ledger_lines .. SELECT .. FROM journal, unnest(:accounts, ..)),
         message AS (INSERT INTO notification_outbox .. SELECT .. FROM moved),
         answer  AS (UPDATE idempotency_keys SET state = 'COMPLETED', response_body = ..
                     WHERE payment_id = :id AND state = 'IN_PROGRESS' AND EXISTS (moved))
    SELECT count(*) of each

Sent alone (`RawReads`, no BEGIN/COMMIT), one statement is one transaction: the
move, its event, its journal, its outbox message and the stored answer commit together
or not at all, in one round trip instead of eleven (BEGIN, lock, move, event, journal,
3 lines, message, answer, COMMIT). The guarded UPDATE is the lock: a concurrent finisher
(the reconciler, a webhook) waits for it, then finds the row no longer PROCESSING and
moves nothing; when *it* came first, `moved = 0` here and nothing else is written
(every other part reads `moved`).
The deferred ledger-balance trigger checks the lines when the statement commits.

The caller computes the new row (it holds tx 2's), so the stored answer is rendered
before the statement, `updated_at` included. Built once at import; parameters only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from payment_service.db import Positional, RawReads
from payment_service.jsonutil import json_text

if TYPE_CHECKING:  # the draft is built by the ledger service; here only its fields are read
    from payment_service.services.ledger import JournalDraft

_STATEMENT = Positional.of(
    """
WITH moved AS (
    UPDATE payments
       SET status = CAST(:status AS varchar),
           gateway_reference = coalesce(CAST(:gateway_reference AS varchar), gateway_reference),
           failure_reason = CAST(:failure_reason AS varchar),
           updated_at = CAST(:updated_at AS timestamptz)
     WHERE id = CAST(:payment_id AS bigint) AND status = 'PROCESSING'
 RETURNING id, amount, kind, trip_id, driver_id, rider_id
), event AS (
    INSERT INTO payment_events (payment_id, event_type, from_status, to_status, amount, data, actor)
    SELECT id, CAST(:event_type AS varchar), 'PROCESSING', CAST(:status AS varchar), amount,
           CAST(:event_data AS jsonb), CAST(:actor AS varchar)
      FROM moved
 RETURNING id
), journal AS (
    INSERT INTO ledger_journals
           (entry_type, payment_kind, payment_id, trip_id, driver_id, rider_id, amount, description)
    SELECT CAST(:entry_type AS varchar), kind, id, trip_id, driver_id, rider_id, amount,
           CAST(:journal_description AS varchar)
      FROM moved
     WHERE CAST(:post_journal AS boolean)
        ON CONFLICT DO NOTHING
 RETURNING id
), lines AS (
    INSERT INTO ledger_lines (journal_id, account, amount)
    SELECT journal.id, line.account, line.amount
      FROM journal, unnest(CAST(:accounts AS varchar[]), CAST(:amounts AS numeric[]))
           AS line(account, amount)
 RETURNING id
), message AS (
    INSERT INTO notification_outbox (message_type, payment_id, payload, traceparent)
    SELECT CAST(:message_type AS varchar), id, CAST(:payload AS jsonb),
           CAST(:traceparent AS varchar)
      FROM moved
 RETURNING id
), answer AS (
    UPDATE idempotency_keys
       SET state = 'COMPLETED', response_status = CAST(:status_code AS integer),
           response_body = CAST(:body AS varchar), lease_token = NULL, locked_until = NULL
     WHERE operation = CAST(:operation AS varchar) AND payment_id = CAST(:payment_id AS bigint)
       AND state = 'IN_PROGRESS' AND EXISTS (SELECT 1 FROM moved)
 RETURNING id
)
SELECT (SELECT count(*) FROM moved) AS moved,
       (SELECT count(*) FROM event) AS events,
       (SELECT count(*) FROM journal) AS journals,
       (SELECT count(*) FROM lines) AS lines,
       (SELECT count(*) FROM message) AS messages,
       (SELECT count(*) FROM answer) AS answers
"""
)


@dataclass(frozen=True, slots=True)
class FinishedCharge:
    moved: bool
    journal_posted: bool


async def finish_processing_charge(
    reads: RawReads,
    *,
    payment_id: int,
    status: str,
    gateway_reference: str | None,
    failure_reason: str | None,
    updated_at: datetime,
    event_type: str,
    event_data: dict[str, Any],
    actor: str | None,
    journal: JournalDraft | None,
    message_type: str,
    payload: dict[str, Any],
    traceparent: str | None,
    operation: str,
    status_code: int,
    body: str,
) -> FinishedCharge:
    """Move the payment out of PROCESSING with everything that goes with it, or nothing.

    `journal` is the capture's, None when none is posted.
    """
    entry_type, description, lines = (
        (journal.entry_type, journal.description, journal.lines)
        if journal is not None
        else ("CAPTURE", None, ())
    )
    params = {
        "payment_id": payment_id,
        "status": status,
        "gateway_reference": gateway_reference,
        "failure_reason": failure_reason,
        "updated_at": updated_at,
        "event_type": event_type,
        "event_data": json_text(event_data),
        "actor": actor,
        "entry_type": entry_type,
        "journal_description": description,
        "post_journal": journal is not None,
        "accounts": [account for account, _ in lines],
        "amounts": [amount for _, amount in lines],
        "message_type": message_type,
        "payload": json_text(payload),
        "traceparent": traceparent,
        "operation": operation,
        "status_code": status_code,
        "body": body,
    }
    row = await reads.fetchrow(_STATEMENT.sql, *_STATEMENT.args(params))
    return FinishedCharge(moved=row["moved"] == 1, journal_posted=row["journals"] == 1)
