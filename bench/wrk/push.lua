-- wrk script for bench/ingest_bench.py: every request carries a unique itinId, and done() prints one
-- machine-readable line ("BENCH_RESULT {json}") instead of making the driver parse wrk's text.
--
-- Arguments after `--` on the wrk command line:
--   event <nonce>            POST a TRIP_DELETION event   (small body, ~90 bytes)
--   trip  <nonce> <fixture>  POST the fixture trip with its itinId replaced
-- <nonce> is 8 hex digits chosen per wrk run, so ids are unique across runs too:
-- itinId = nonce (8 hex) .. thread id (4 hex) .. per-thread counter (12 hex) = 24 hex digits.

local FIXTURE_ITIN_ID = "9d9b9e60a9ee841fd67a6e92"

local next_tid = 0

function setup(thread)
  thread:set("tid", next_tid)  -- becomes the global `tid` in that thread's Lua state
  next_tid = next_tid + 1
end

local prefix, suffix, nonce
local counter = 0

function init(args)
  local mode = args[1]
  nonce = assert(args[2], "missing nonce argument")
  if mode == "event" then
    prefix = '{"itinId":"'
    suffix = '","event":"TRIP_DELETION","date":"2025-02-01T09:12:47.000+0000"}'
  elseif mode == "trip" then
    local f = assert(io.open(assert(args[3], "missing fixture path"), "rb"))
    local body = f:read("*a")
    f:close()
    local s, e = string.find(body, FIXTURE_ITIN_ID, 1, true)  -- plain find, no pattern
    assert(s, "fixture does not contain itinId " .. FIXTURE_ITIN_ID)
    prefix, suffix = body:sub(1, s - 1), body:sub(e + 1)
  elseif mode == "raw" then
    -- a body sent as is (the gzip-encoded trip): the same bytes every time, which the
    -- receiver logs like any other push
    local f = assert(io.open(assert(args[3], "missing body path"), "rb"))
    prefix = f:read("*a")
    f:close()
  else
    error("mode must be 'event', 'trip' or 'raw', got " .. tostring(mode))
  end
  wrk.method = "POST"
end

function request()
  counter = counter + 1
  if suffix == nil then
    return wrk.format(nil, nil, nil, prefix)
  end
  local id = string.format("%s%04x%012x", nonce, tid, counter)
  return wrk.format(nil, nil, nil, prefix .. id .. suffix)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"duration_us":%d,"requests":%d,"bytes_read":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"mean":%.1f,"max":%d,"stdev":%.1f,"p50":%d,"p90":%d,"p99":%d,"p999":%d}}\n',
    summary.duration, summary.requests, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.max, latency.stdev,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9)))
end
