-- pgbench script: the SQL one GET /v1/payments/{payment_id} performs (the read ceiling).
--
-- Where it comes from: PostgreSQL's own log (log_statement = 'all', one request against
-- `payment-service serve`, 2026-12-01, branch speed); `python -m bench` checks this file
-- against a fresh capture on every run with an embedded server.
-- GET routes read through an AUTOCOMMIT session (dependencies.read_only): one round
-- trip, the SELECT alone.
-- Ids are drawn uniformly from the payments that exist: the harness passes
-- `-D min_id=... -D max_id=...` (payment ids come from one sequence, so the range is dense).

\set id random(:min_id, :max_id)

SELECT payments.id, payments.trip_id, payments.rider_id, payments.driver_id, payments.amount, payments.currency, payments.method, payments.status, payments.refunded_amount, payments.refund_reserved, payments.reference, payments.gateway_reference, payments.gateway_idempotency_key, payments.failure_reason, payments.metadata, payments.kind, payments.parent_payment_id, payments.trip_snapshot, payments.commission_rate, payments.created_at, payments.updated_at
	FROM payments
	WHERE payments.id = :id::BIGINT;
