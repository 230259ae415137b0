-- pgbench script: the SQL one GET /v1/payments/{payment_id} performs (the read ceiling).
--
-- Where it comes from: repositories/payment.PaymentReads.by_id, as PostgreSQL's own log
-- shows it (log_statement = 'all', one request against `payment-service serve`,
-- 2026-12-01); `python -m bench` checks this file against a fresh capture on every run
-- with an embedded server. GET routes run one statement on a pooled connection's asyncpg
-- connection (db.RawReads): no transaction, one round trip, the SELECT alone.
-- Ids are drawn uniformly from the payments that exist: the harness passes
-- `-D min_id=... -D max_id=...` (payment ids come from one sequence, so the range is dense).

\set id random(:min_id, :max_id)

SELECT id, trip_id, rider_id, driver_id, amount, currency, method, status, refunded_amount, reference, created_at, updated_at, kind, parent_payment_id FROM payments WHERE id = :id;
