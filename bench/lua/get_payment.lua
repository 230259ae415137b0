-- GET /v1/payments/{id} for ids drawn at random from existing payments
-- (BENCH_IDS_FILE: one id per line, written by the harness from the database).
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

function init(args)
  ids = {}
  for line in io.lines(os.getenv("BENCH_IDS_FILE")) do
    if line ~= "" then
      ids[#ids + 1] = line
    end
  end
  assert(#ids > 0, "BENCH_IDS_FILE holds no ids")
  math.randomseed(os.time() + thread_no * 7919)
  headers = bench_headers()
  bench_pacing(bench_threads())
end

function request()
  return wrk.format("GET", "/v1/payments/" .. ids[math.random(#ids)], headers)
end
