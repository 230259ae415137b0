-- GET /health (the seed API's health check: it runs SELECT 1 on the database)
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

function init(args)
  req = wrk.format("GET", "/health", bench_headers())
  bench_pacing(bench_threads())
end

function request()
  return req
end
