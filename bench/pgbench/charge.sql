-- pgbench script: the SQL one POST /v1/payments/charge performs, statement for statement.
--
-- Where it comes from: PostgreSQL's own log (log_statement = 'all', one charge against
-- `payment-service serve` with GATEWAY=simulator, 2026-12-01, branch speed after the
-- tx 2 CTE). `python -m bench` captures that log again on every run with an embedded
-- server and checks this file against it (output line "SQL check"; `--show-sql` prints
-- the captured statements).
--
-- One pgbench transaction = one charge = 3 database transactions, 18 round trips:
--   tx 1  claim the idempotency key, refuse early if the trip is already paid
--         BEGIN, INSERT .. ON CONFLICT .. RETURNING, SELECT, COMMIT
--         (the Trip service call happens here, outside any transaction)
--   tx 2  the PROCESSING payment + CHARGE_STARTED event + key bound, one CTE
--         BEGIN, WITH p AS (INSERT ..), k AS (UPDATE ..), e AS (INSERT ..) SELECT, COMMIT
--         (the processor is called here, outside any transaction)
--   tx 3  services/transitions.finish_charge: lock, guarded move, event, journal, outbox,
--         answer: BEGIN, SELECT .. FOR UPDATE, UPDATE, INSERT event, INSERT journal,
--         3 x INSERT line, INSERT outbox, UPDATE key, COMMIT
--
-- Parameters are the captured ones: `$n` placeholders become `:variables` (pgbench -M
-- prepared sends them as bind parameters, as asyncpg does); a NULL parameter is written
-- NULL. The ids that must be unique per charge (idempotency key, trip, reference, gateway
-- key) derive from a per-client counter; the harness passes `-D n=0 -D base=<offset>`.
-- The `@define` lines below are passed to pgbench as `-D name=value` by the harness.
--
-- @define op=charge
-- @define client=1
-- @define fingerprint=f6a817a169fa60d95319ac005c7370e4a1fe832645c56a2ba2fc0924edb78def
-- @define in_progress=IN_PROGRESS
-- @define token=bbfd56df-9969-40cf-8e9d-26e50f1a04e4
-- @define lease=00:00:30
-- @define ttl=1 day
-- @define failed=FAILED
-- @define one=1
-- @define rider_id=1
-- @define driver_id=1
-- @define amount=60.75
-- @define currency=INR
-- @define method=CARD
-- @define processing=PROCESSING
-- @define success=SUCCESS
-- @define metadata={}
-- @define started=CHARGE_STARTED
-- @define started_data={"gateway": "simulator"}
-- @define actor=bench
-- @define gateway_reference=SIM-C582B210F9E519EA
-- @define event_type=CHARGE_SUCCESS
-- @define event_data={"source": "request", "message": "Payment successful", "failure_reason": null, "gateway_reference": "SIM-C582B210F9E519EA"}
-- @define message_type=payment
-- @define payload={"type": "payment", "event": "payment.success", "amount": 60.75, "method": "CARD", "status": "SUCCESS", "trip_id": 1000000, "currency": "INR", "rider_id": 1, "driver_id": 1, "reference": "RHP20261201-GS36MS", "payment_id": 351, "request_id": "3280f984701f4d3da1293e413e668c85", "occurred_at": "2026-12-01T15:28:32.989628+00:00"}
-- @define completed=COMPLETED
-- @define fare=FARE
-- @define cancellation_fee=CANCELLATION_FEE
-- @define trip_snapshot={"trip_id": 1000000, "status": "COMPLETED"}
-- @define commission_rate=0.20
-- @define capture=CAPTURE
-- @define journal_description=fare captured
-- @define clearing=processor:clearing
-- @define driver_account=driver:1
-- @define commission_account=platform:commission
-- @define driver_share=-48.60
-- @define commission=-12.15
-- @define status_code=201
-- @define body={"payment_id":351,"trip_id":1000000,"rider_id":1,"driver_id":1,"amount":60.75,"currency":"INR","method":"CARD","status":"SUCCESS","refunded_amount":0.00,"reference":"RHP20261201-GS36MS","created_at":"2026-12-01T15:28:32.989628Z","updated_at":"2026-12-01T15:28:33.024138Z","message":"Payment successful"}

\set n :n + 1
\set trip_id :base + :client_id * 100000000 + :n

-- tx 1: Idempotency.claim -> IdempotencyRepository.insert_if_absent, then the precheck
-- charge._ensure_unpaid (one live payment per trip) in the same transaction
BEGIN ISOLATION LEVEL READ COMMITTED;
INSERT INTO idempotency_keys (operation, client_id, key, fingerprint, state, lease_token, locked_until, expires_at) VALUES (:op::VARCHAR, :client::VARCHAR, :trip_id::VARCHAR, :fingerprint::VARCHAR, :in_progress::VARCHAR, :token::VARCHAR, (now() + :lease::INTERVAL), (now() + :ttl::INTERVAL)) ON CONFLICT ON CONSTRAINT uq_idempotency_keys_scope DO NOTHING RETURNING idempotency_keys.id \gset key_
SELECT payments.id, payments.status
	FROM payments
	WHERE payments.trip_id = :trip_id::BIGINT AND payments.status != :failed::VARCHAR AND payments.kind IN (:fare::VARCHAR, :cancellation_fee::VARCHAR)
	 LIMIT :one::INTEGER;
COMMIT;

-- tx 2: repositories/charge_start.start_charge (ChargeService._create_payment)
BEGIN ISOLATION LEVEL READ COMMITTED;
WITH p AS (INSERT INTO payments (trip_id, rider_id, driver_id, amount, currency, method, status, reference, gateway_idempotency_key, metadata, kind, trip_snapshot, commission_rate) VALUES (:trip_id::BIGINT, :rider_id::BIGINT, :driver_id::BIGINT, :amount::NUMERIC(12, 2), :currency::VARCHAR, :method::VARCHAR, :processing::VARCHAR, :trip_id::VARCHAR, :trip_id::VARCHAR, :metadata::JSONB, :fare::VARCHAR, :trip_snapshot::JSONB, :commission_rate::NUMERIC(5, 4)) ON CONFLICT (trip_id) WHERE status <> 'FAILED' AND kind IN ('FARE', 'CANCELLATION_FEE') DO NOTHING RETURNING payments.id, payments.trip_id, payments.rider_id, payments.driver_id, payments.amount, payments.currency, payments.method, payments.status, payments.refunded_amount, payments.refund_reserved, payments.reference, payments.gateway_reference, payments.gateway_idempotency_key, payments.failure_reason, payments.metadata, payments.kind, payments.parent_payment_id, payments.trip_snapshot, payments.commission_rate, payments.created_at, payments.updated_at),
	k AS (UPDATE idempotency_keys SET payment_id=(SELECT p.id FROM p) WHERE idempotency_keys.id = :key_id::BIGINT AND idempotency_keys.lease_token = :token::VARCHAR AND (EXISTS (SELECT p.id FROM p)) RETURNING idempotency_keys.id),
	e AS (INSERT INTO payment_events (payment_id, event_type, from_status, to_status, amount, data, actor) SELECT p.id AS id, :started::VARCHAR AS anon_1, NULL::VARCHAR AS anon_2, p.status AS status, p.amount AS amount, :started_data::JSONB AS anon_3, :actor::VARCHAR AS anon_4 FROM p RETURNING payment_events.id)
	SELECT p.id, p.trip_id, p.rider_id, p.driver_id, p.amount, p.currency, p.method, p.status, p.refunded_amount, p.refund_reserved, p.reference, p.gateway_reference, p.gateway_idempotency_key, p.failure_reason, p.metadata, p.kind, p.parent_payment_id, p.trip_snapshot, p.commission_rate, p.created_at, p.updated_at, (SELECT count(*) AS count_1 FROM k) AS bound, (SELECT count(*) AS count_2 FROM e) AS events FROM p \gset payment_
COMMIT;

-- tx 3: services/transitions.finish_charge (PROCESSING -> SUCCESS)
BEGIN ISOLATION LEVEL READ COMMITTED;
SELECT payments.id, payments.trip_id, payments.rider_id, payments.driver_id, payments.amount, payments.currency, payments.method, payments.status, payments.refunded_amount, payments.refund_reserved, payments.reference, payments.gateway_reference, payments.gateway_idempotency_key, payments.failure_reason, payments.metadata, payments.kind, payments.parent_payment_id, payments.trip_snapshot, payments.commission_rate, payments.created_at, payments.updated_at FROM payments WHERE payments.id = :payment_id::BIGINT FOR UPDATE;
UPDATE payments SET status=:success::VARCHAR, gateway_reference=coalesce(:gateway_reference::VARCHAR, payments.gateway_reference), failure_reason=NULL::VARCHAR, updated_at=now() WHERE payments.id = :payment_id::BIGINT AND payments.status IN (:processing::VARCHAR) RETURNING payments.id, payments.trip_id, payments.rider_id, payments.driver_id, payments.amount, payments.currency, payments.method, payments.status, payments.refunded_amount, payments.refund_reserved, payments.reference, payments.gateway_reference, payments.gateway_idempotency_key, payments.failure_reason, payments.metadata, payments.kind, payments.parent_payment_id, payments.trip_snapshot, payments.commission_rate, payments.created_at, payments.updated_at;
INSERT INTO payment_events (payment_id, event_type, from_status, to_status, amount, data, actor) VALUES (:payment_id::BIGINT, :event_type::VARCHAR, :processing::VARCHAR, :success::VARCHAR, :amount::NUMERIC(12, 2), :event_data::JSONB, :actor::VARCHAR) RETURNING payment_events.id;
INSERT INTO ledger_journals (entry_type, payment_kind, payment_id, refund_id, trip_id, driver_id, rider_id, amount, description) VALUES (:capture::VARCHAR, :fare::VARCHAR, :payment_id::BIGINT, NULL::BIGINT, :trip_id::BIGINT, :driver_id::BIGINT, :rider_id::BIGINT, :amount::NUMERIC(12, 2), :journal_description::VARCHAR) ON CONFLICT DO NOTHING RETURNING ledger_journals.id \gset journal_
INSERT INTO ledger_lines (journal_id, account, amount) VALUES (:journal_id::BIGINT, :clearing::VARCHAR, :amount::NUMERIC(12, 2));
INSERT INTO ledger_lines (journal_id, account, amount) VALUES (:journal_id::BIGINT, :driver_account::VARCHAR, :driver_share::NUMERIC(12, 2));
INSERT INTO ledger_lines (journal_id, account, amount) VALUES (:journal_id::BIGINT, :commission_account::VARCHAR, :commission::NUMERIC(12, 2));
INSERT INTO notification_outbox (message_type, payment_id, payload, traceparent) VALUES (:message_type::VARCHAR, :payment_id::BIGINT, :payload::JSONB, NULL::VARCHAR) RETURNING notification_outbox.id;
UPDATE idempotency_keys SET state=:completed::VARCHAR, lease_token=NULL::VARCHAR, locked_until=NULL::TIMESTAMP WITH TIME ZONE, response_status=:status_code::INTEGER, response_body=:body::VARCHAR WHERE idempotency_keys.operation = :op::VARCHAR AND idempotency_keys.payment_id = :payment_id::BIGINT AND idempotency_keys.state = :in_progress::VARCHAR;
COMMIT;
