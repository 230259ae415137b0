-- GET /v1/payments?status=SUCCESS&limit=10
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

function init(args)
  req = wrk.format("GET", "/v1/payments?status=SUCCESS&limit=10", bench_headers())
  bench_pacing(bench_threads())
end

function request()
  return req
end
