-- POST /v1/payments/charge with a unique idempotency key and a fresh trip each time.
--
-- Trips with ids >= 1,000,000 are synthesised as COMPLETED by the sandbox Trip service,
-- so every id below is chargeable once. Ids are disjoint per run and per thread:
--   trip_id = BENCH_TRIP_BASE + thread_no * 10,000,000 + n      (n = 1, 2, ...)
-- BENCH_TRIP_BASE is a multiple of 1,000,000,000 chosen by the harness per wrk run.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local METHODS = { "CARD", "UPI", "WALLET", "CASH" }

function init(args)
  local base = tonumber(os.getenv("BENCH_TRIP_BASE"))
  assert(base and base >= 1000000, "BENCH_TRIP_BASE must be set (>= 1000000)")
  first_trip = base + thread_no * 10000000
  run_id = os.getenv("BENCH_RUN_ID") or "run"
  n = 0
  headers = bench_headers({ ["Content-Type"] = "application/json" })
  bench_pacing(bench_threads())
end

function request()
  n = n + 1
  local trip_id = first_trip + n
  local body = string.format(
    '{"idempotency_key":"bench-%s-%d","trip_id":%d,"method":"%s"}',
    run_id, trip_id, trip_id, METHODS[(n % 4) + 1])
  return wrk.format("POST", "/v1/payments/charge", headers, body)
end
