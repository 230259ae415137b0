-- Shared by every bench scenario (loaded with dofile from each scenario script).
--
-- Environment (set by `python -m bench`):
--   BENCH_RATE   total target requests/s for a paced run (absent or 0: as fast as possible)
--
-- Each wrk thread gets a number 1..threads in setup(); scenarios use it to keep their ids
-- disjoint. done() prints one line `BENCH_JSON {...}` that the harness parses.

local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
  int clock_gettime(int clk_id, bench_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local ts = ffi.new("bench_timespec")

local function now_ms()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

-- setup() runs in the main Lua state once per thread, before the threads start.
local thread_count = 0
local all_threads = {}
function setup(thread)
  thread_count = thread_count + 1
  thread:set("thread_no", thread_count)
  table.insert(all_threads, thread)
end

-- The status of every answer outside 2xx, counted per thread (`failed_statuses`, read
-- back in done()), so a non-2xx says what it was. A string "status=count,..." because
-- thread:get copies only strings and numbers between Lua states.
failed_statuses = ""
local failed = {}
function response(status, headers, body)
  if status >= 300 then
    failed[status] = (failed[status] or 0) + 1
    local parts = {}
    for code, count in pairs(failed) do
      table.insert(parts, code .. "=" .. count)
    end
    failed_statuses = table.concat(parts, ",")
  end
end

local function statuses_json()
  local total = {}
  for _, thread in ipairs(all_threads) do
    for code, count in string.gmatch(thread:get("failed_statuses") or "", "(%d+)=(%d+)") do
      total[code] = (total[code] or 0) + tonumber(count)
    end
  end
  local parts = {}
  for code, count in pairs(total) do
    table.insert(parts, string.format('"%s":%d', code, count))
  end
  return "{" .. table.concat(parts, ",") .. "}"
end

-- Pacing (the wrk2-like part): each thread sends on a fixed schedule of
-- `rate / threads` requests per second, shared by its connections. delay() is
-- called before every request; it returns the milliseconds until this request's
-- slot. When the server falls behind, the overdue requests go out at once (no
-- catch-up is skipped), so the offered load stays at the target rate as long as
-- enough connections are free. The latency wrk records starts when the request
-- is sent, not at its slot: queueing before send is not counted (see README).
function bench_pacing(threads)
  local rate = tonumber(os.getenv("BENCH_RATE") or "0") or 0
  if rate <= 0 then
    return
  end
  local interval = 1000.0 * threads / rate
  local next_at = nil
  delay = function()
    local now = now_ms()
    if next_at == nil then
      -- spread the threads' first slots over one interval
      next_at = now + interval * ((thread_no or 1) - 1) / threads
    end
    local wait = next_at - now
    next_at = next_at + interval
    if wait <= 0 then
      return 0
    end
    return math.floor(wait)
  end
end

function bench_threads()
  return tonumber(os.getenv("BENCH_THREADS") or "1") or 1
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"mean":%.1f,"stdev":%.1f,"max":%d,' ..
    '"p50":%d,"p75":%d,"p90":%d,"p99":%d,"p999":%d},"statuses":%s}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.stdev, latency.max,
    latency:percentile(50), latency:percentile(75), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), statuses_json()))
end

-- Headers every request sends: `Authorization: Bearer <BENCH_API_KEY>` (the harness creates
-- a read+charge key) plus the scenario's own.
function bench_headers(extra)
  local headers = {}
  local key = os.getenv("BENCH_API_KEY")
  if key and key ~= "" then
    headers["Authorization"] = "Bearer " .. key
  end
  for name, value in pairs(extra or {}) do
    headers[name] = value
  end
  return headers
end
