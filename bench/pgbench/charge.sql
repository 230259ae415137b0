-- pgbench script: the SQL one POST /v1/payments/charge performs, statement for statement.
--
-- Where it comes from: PostgreSQL's own log (log_statement = 'all', one charge against
-- `payment-service serve`, 2026-11-26, service at commit 5aab55c, i.e. after 10f9ca2 moved
-- the already-paid check into the claiming transaction). `python -m bench` captures
-- that log again on every run with an embedded server and checks this file against it
-- (output line "SQL check"; `--show-sql` prints the captured statements).
--
-- One pgbench transaction = one charge = 2 database transactions, 10 round trips:
--   tx 1  claim the idempotency key, refuse early if the trip is already paid
--         BEGIN, INSERT .. ON CONFLICT .. RETURNING, SELECT, COMMIT
--         (the Trip service call and the gateway happen here, outside any transaction)
--   tx 2  payment + event + outbox + stored answer   BEGIN, 4 statements, COMMIT
--
-- Parameters are the captured ones: `$n` placeholders become `:variables` (pgbench -M
-- prepared sends them as bind parameters, as asyncpg does); a NULL parameter is written
-- NULL. The ids that must be unique per charge (idempotency key, trip, reference) derive
-- from a per-client counter; the harness passes `-D n=0 -D base=<run-unique offset>`.
-- The `@define` lines below are passed to pgbench as `-D name=value` by the harness.
--
-- @define op=charge
-- @define client=default
-- @define fingerprint=f6a817a169fa60d95319ac005c7370e4a1fe832645c56a2ba2fc0924edb78def
-- @define in_progress=IN_PROGRESS
-- @define token=c657f646-05cc-4b49-86ca-750425bc8504
-- @define lease=00:00:30
-- @define ttl=1 day
-- @define failed=FAILED
-- @define one=1
-- @define rider_id=1
-- @define driver_id=1
-- @define amount=60.75
-- @define currency=INR
-- @define method=CARD
-- @define success=SUCCESS
-- @define gateway_reference=SIM-C582B210F9E519EA
-- @define metadata={}
-- @define event_type=CHARGE_SUCCESS
-- @define event_data={"message": "Payment successful", "gateway_reference": "SIM-C582B210F9E519EA"}
-- @define message_type=payment
-- @define payload={"type": "payment", "event": "payment.success", "amount": 60.75, "method": "CARD", "status": "SUCCESS", "trip_id": 1000000, "currency": "INR", "rider_id": 1, "driver_id": 1, "reference": "RHP20261126-LHBUTC", "payment_id": 356, "request_id": "220c6fcf244a490f962ad49f07d6465e", "occurred_at": "2026-11-26T04:29:38.298321+00:00"}
-- @define completed=COMPLETED
-- @define status_code=201
-- @define body={"payment_id":356,"trip_id":1000000,"rider_id":1,"driver_id":1,"amount":60.75,"currency":"INR","method":"CARD","status":"SUCCESS","refunded_amount":0.00,"reference":"RHP20261126-LHBUTC","created_at":"2026-11-26T04:29:38.298321Z","updated_at":"2026-11-26T04:29:38.298321Z","message":"Payment successful"}

\set n :n + 1
\set trip_id :base + :client_id * 100000000 + :n

-- tx 1: Idempotency.claim -> IdempotencyRepository.insert_if_absent, then the precheck
-- charge._ensure_unpaid (one live payment per trip) in the same transaction
BEGIN;
INSERT INTO idempotency_keys (operation, client_id, key, fingerprint, state, lease_token, locked_until, expires_at) VALUES (:op::VARCHAR, :client::VARCHAR, :trip_id::VARCHAR, :fingerprint::VARCHAR, :in_progress::VARCHAR, :token::VARCHAR, (now() + :lease::INTERVAL), (now() + :ttl::INTERVAL)) ON CONFLICT ON CONSTRAINT uq_idempotency_keys_scope DO NOTHING RETURNING idempotency_keys.id \gset key_
SELECT payments.id, payments.status
	FROM payments
	WHERE payments.trip_id = :trip_id::BIGINT AND payments.status != :failed::VARCHAR
	 LIMIT :one::INTEGER;
COMMIT;

-- tx 2: ChargeService._insert_payment, _record_side_effects, Idempotency.complete
BEGIN;
INSERT INTO payments (trip_id, rider_id, driver_id, amount, currency, method, status, reference, gateway_reference, failure_reason, metadata) VALUES (:trip_id::BIGINT, :rider_id::BIGINT, :driver_id::BIGINT, :amount::NUMERIC(12, 2), :currency::VARCHAR, :method::VARCHAR, :success::VARCHAR, :trip_id::VARCHAR, :gateway_reference::VARCHAR, NULL::VARCHAR, :metadata::JSONB) ON CONFLICT (trip_id) WHERE status <> 'FAILED' DO NOTHING RETURNING payments.id, payments.trip_id, payments.rider_id, payments.driver_id, payments.amount, payments.currency, payments.method, payments.status, payments.refunded_amount, payments.reference, payments.gateway_reference, payments.failure_reason, payments.metadata, payments.created_at, payments.updated_at \gset payment_
INSERT INTO payment_events (payment_id, event_type, from_status, to_status, amount, data) VALUES (:payment_id::BIGINT, :event_type::VARCHAR, NULL::VARCHAR, :success::VARCHAR, :amount::NUMERIC(12, 2), :event_data::JSONB) RETURNING payment_events.id;
INSERT INTO notification_outbox (message_type, payment_id, payload) VALUES (:message_type::VARCHAR, :payment_id::BIGINT, :payload::JSONB) RETURNING notification_outbox.id;
UPDATE idempotency_keys SET state=:completed::VARCHAR, lease_token=NULL::VARCHAR, locked_until=NULL::TIMESTAMP WITH TIME ZONE, response_status=:status_code::INTEGER, response_body=:body::VARCHAR, payment_id=:payment_id::BIGINT WHERE idempotency_keys.id = :key_id::BIGINT AND idempotency_keys.lease_token = :token::VARCHAR;
COMMIT;
