-- GET /health/live (no database, no auth: the framework's floor per request)
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

function init(args)
  req = wrk.format("GET", "/health/live", bench_headers())
  bench_pacing(bench_threads())
end

function request()
  return req
end
