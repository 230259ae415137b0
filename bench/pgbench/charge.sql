-- pgbench script: the SQL one POST /v1/payments/charge performs, statement for statement.
--
-- Where it comes from: PostgreSQL's own log (log_statement = 'all', one charge against
-- `payment-service serve` with GATEWAY=simulator, 2026-12-01, after tx 1, 2 and 3 became
-- one statement each). `python -m bench` captures that log again on every run with an
-- embedded server and checks this file against it (output line "SQL check";
-- `--show-sql` prints the captured statements).
--
-- One pgbench transaction = one charge = 3 statements = 3 round trips. Each runs alone in
-- AUTOCOMMIT (one statement is one transaction), so no BEGIN/COMMIT is sent:
--   tx 1  repositories/charge_start.claim_charge: claim the idempotency key unless the
--         trip has a live payment, and read the key's earlier row (a replay's answer)
--         (the Trip service call happens here, outside any transaction)
--   tx 2  repositories/charge_start.start_charge: lock our lease, the PROCESSING payment,
--         its CHARGE_STARTED event, the key bound to it
--         (the processor is called here, outside any transaction)
--   tx 3  repositories/charge_finish.finish_processing_charge: the guarded move to SUCCESS,
--         its event, the capture journal and its lines, the outbox message, the answer
--
-- Parameters are the captured ones: `$n` placeholders become `:variables` (pgbench -M
-- prepared sends them as bind parameters, as asyncpg does); a NULL parameter is written
-- NULL. The ids that must be unique per charge (idempotency key, trip, reference, gateway
-- key) derive from a per-client counter; the harness passes `-D n=0 -D base=<offset>`.
-- The `@define` lines below are passed to pgbench as `-D name=value` by the harness.
--
-- @define accounts={processor:clearing,driver:1,platform:commission}
-- @define actor=bench
-- @define amount=60.75
-- @define amounts={60.75,-48.60,-12.15}
-- @define body={"payment_id":351,"trip_id":1000000,"rider_id":1,"driver_id":1,"amount":60.75,"currency":"INR","method":"CARD","status":"SUCCESS","refunded_amount":0.00,"reference":"RHP20261201-GS36MS","created_at":"2026-12-01T15:28:32.989628Z","updated_at":"2026-12-01T15:28:33.024138Z","kind":"FARE","parent_payment_id":null,"message":"Payment successful"}
-- @define capture=CAPTURE
-- @define client=1
-- @define commission_rate=0.20
-- @define currency=INR
-- @define driver_id=1
-- @define event_data={"source": "request", "message": "Payment successful", "failure_reason": null, "gateway_reference": "SIM-C582B210F9E519EA"}
-- @define event_type=CHARGE_SUCCESS
-- @define fare=FARE
-- @define fingerprint=f6a817a169fa60d95319ac005c7370e4a1fe832645c56a2ba2fc0924edb78def
-- @define gateway_reference=SIM-C582B210F9E519EA
-- @define journal_description=fare captured
-- @define lease=00:00:30
-- @define message_type=payment
-- @define metadata={}
-- @define method=CARD
-- @define op=charge
-- @define payload={"kind": "FARE", "type": "payment", "event": "payment.success", "amount": 60.75, "method": "CARD", "status": "SUCCESS", "trip_id": 1000000, "currency": "INR", "rider_id": 1, "driver_id": 1, "reference": "RHP20261201-GS36MS", "payment_id": 351, "request_id": "3280f984701f4d3da1293e413e668c85", "occurred_at": "2026-12-01T15:28:32.989628+00:00", "parent_payment_id": null}
-- @define post_journal=true
-- @define processing=PROCESSING
-- @define rider_id=1
-- @define started=CHARGE_STARTED
-- @define started_data={"kind": "FARE", "gateway": "simulator"}
-- @define status_code=201
-- @define success=SUCCESS
-- @define token=bbfd56df-9969-40cf-8e9d-26e50f1a04e4
-- @define trip_snapshot={"trip_id": 1000000, "status": "COMPLETED"}
-- @define ttl=1 day
-- @define updated_at=2026-12-01 15:28:33.024138+00

\set n :n + 1
\set trip_id :base + :client_id * 100000000 + :n

-- tx 1: ChargeService._claim -> charge_start.claim_charge
WITH live AS (
	    SELECT id, status FROM payments
	     WHERE trip_id = CAST(:trip_id AS bigint) AND status <> 'FAILED' AND kind IN ('FARE', 'CANCELLATION_FEE')
	     LIMIT 1
	), claimed AS (
	    INSERT INTO idempotency_keys
	           (operation, client_id, key, fingerprint, state, lease_token, locked_until, expires_at)
	    SELECT CAST(:op AS varchar), CAST(:client AS varchar), CAST(:trip_id AS varchar),
	           CAST(:fingerprint AS varchar), 'IN_PROGRESS', CAST(:token AS varchar),
	           now() + CAST(:lease AS interval), now() + CAST(:ttl AS interval)
	     WHERE NOT EXISTS (SELECT 1 FROM live)
	        ON CONFLICT ON CONSTRAINT uq_idempotency_keys_scope DO NOTHING
	 RETURNING id
	), existing AS (
	    SELECT id, fingerprint, state, locked_until, expires_at, response_status, response_body,
	           payment_id, refund_id
	      FROM idempotency_keys
	     WHERE operation = CAST(:op AS varchar) AND client_id = CAST(:client AS varchar)
	       AND key = CAST(:trip_id AS varchar)
	)
	SELECT (SELECT id FROM claimed) AS claimed_id,
	       (SELECT id FROM live) AS live_id,
	       (SELECT status FROM live) AS live_status,
	       existing.*,
	       now() AS db_now
	  FROM (SELECT 1) AS one LEFT JOIN existing ON true \gset key_

-- tx 2: ChargeService._create_payment -> charge_start.start_charge
WITH lk AS
	(SELECT idempotency_keys.id AS id
	FROM idempotency_keys
	WHERE idempotency_keys.id = :key_claimed_id::BIGINT AND idempotency_keys.lease_token = :token::VARCHAR FOR UPDATE),
	p AS
	(INSERT INTO payments (trip_id, rider_id, driver_id, currency, method, status, reference, gateway_idempotency_key, metadata, kind, commission_rate, trip_snapshot, amount) SELECT :trip_id::BIGINT AS anon_1, :rider_id::BIGINT AS anon_2, :driver_id::BIGINT AS anon_3, :currency::VARCHAR AS anon_4, :method::VARCHAR AS anon_5, :processing::VARCHAR AS anon_6, :trip_id::VARCHAR AS anon_7, :trip_id::VARCHAR AS anon_8, :metadata::JSONB AS anon_9, :fare::VARCHAR AS anon_10, :commission_rate::NUMERIC(5, 4) AS anon_11, :trip_snapshot::JSONB AS anon_12, :amount::NUMERIC(12, 2) AS anon_13
	WHERE EXISTS (SELECT lk.id
	FROM lk) ON CONFLICT (trip_id) WHERE status <> 'FAILED' AND kind IN ('FARE', 'CANCELLATION_FEE') DO NOTHING RETURNING payments.id, payments.trip_id, payments.rider_id, payments.driver_id, payments.amount, payments.currency, payments.method, payments.status, payments.refunded_amount, payments.refund_reserved, payments.reference, payments.gateway_reference, payments.gateway_idempotency_key, payments.failure_reason, payments.metadata, payments.kind, payments.parent_payment_id, payments.trip_snapshot, payments.commission_rate, payments.created_at, payments.updated_at),
	k AS
	(UPDATE idempotency_keys SET payment_id=(SELECT p.id
	FROM p) WHERE idempotency_keys.id = (SELECT lk.id
	FROM lk) AND (EXISTS (SELECT p.id
	FROM p)) RETURNING idempotency_keys.id),
	e AS
	(INSERT INTO payment_events (payment_id, event_type, from_status, to_status, amount, data, actor) SELECT p.id AS id, :started::VARCHAR AS anon_14, NULL::VARCHAR AS anon_15, p.status AS status, p.amount AS amount, :started_data::JSONB AS anon_16, :actor::VARCHAR AS anon_17
	FROM p RETURNING payment_events.id)
	 SELECT p.id, p.trip_id, p.rider_id, p.driver_id, p.amount, p.currency, p.method, p.status, p.refunded_amount, p.refund_reserved, p.reference, p.gateway_reference, p.gateway_idempotency_key, p.failure_reason, p.metadata, p.kind, p.parent_payment_id, p.trip_snapshot, p.commission_rate, p.created_at, p.updated_at, (SELECT count(*) AS count_1
	FROM k) AS bound, (SELECT count(*) AS count_2
	FROM e) AS events
	FROM p \gset payment_

-- tx 3: transitions.finish_held_charge -> charge_finish.finish_processing_charge
WITH moved AS (
	    UPDATE payments
	       SET status = CAST(:success AS varchar),
	           gateway_reference = coalesce(CAST(:gateway_reference AS varchar), gateway_reference),
	           failure_reason = CAST(NULL AS varchar),
	           updated_at = CAST(:updated_at AS timestamptz)
	     WHERE id = CAST(:payment_id AS bigint) AND status = 'PROCESSING'
	 RETURNING id, amount, kind, trip_id, driver_id, rider_id
	), event AS (
	    INSERT INTO payment_events (payment_id, event_type, from_status, to_status, amount, data, actor)
	    SELECT id, CAST(:event_type AS varchar), 'PROCESSING', CAST(:success AS varchar), amount,
	           CAST(:event_data AS jsonb), CAST(:actor AS varchar)
	      FROM moved
	 RETURNING id
	), journal AS (
	    INSERT INTO ledger_journals
	           (entry_type, payment_kind, payment_id, trip_id, driver_id, rider_id, amount, description)
	    SELECT CAST(:capture AS varchar), kind, id, trip_id, driver_id, rider_id, amount,
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
	           CAST(NULL AS varchar)
	      FROM moved
	 RETURNING id
	), answer AS (
	    UPDATE idempotency_keys
	       SET state = 'COMPLETED', response_status = CAST(:status_code AS integer),
	           response_body = CAST(:body AS varchar), lease_token = NULL, locked_until = NULL
	     WHERE operation = CAST(:op AS varchar) AND payment_id = CAST(:payment_id AS bigint)
	       AND state = 'IN_PROGRESS' AND EXISTS (SELECT 1 FROM moved)
	 RETURNING id
	)
	SELECT (SELECT count(*) FROM moved) AS moved,
	       (SELECT count(*) FROM event) AS events,
	       (SELECT count(*) FROM journal) AS journals,
	       (SELECT count(*) FROM lines) AS lines,
	       (SELECT count(*) FROM message) AS messages,
	       (SELECT count(*) FROM answer) AS answers;
