-- wrk script: cycle through the requests listed in a file (one per line:
-- "PATH<TAB>Header: value<TAB>..."), each thread from a random offset, and
-- optionally pace each connection (second argument: delay in ms between its
-- requests). done() prints one JSON line the harness parses.
--   wrk -s requests.lua URL -- FILE [DELAY_MS]
local reqs = {}
local n = 0
local idx = 0
local pause = 0

function init(args)
  local fh = assert(io.open(args[1], "r"))
  for line in fh:lines() do
    local path = nil
    local headers = {}
    for field in string.gmatch(line, "[^\t]+") do
      if path == nil then
        path = field
      else
        local name, value = string.match(field, "^([^:]+):%s*(.*)$")
        headers[name] = value
      end
    end
    if path ~= nil then
      n = n + 1
      reqs[n] = wrk.format("GET", path, headers)
    end
  end
  fh:close()
  if args[2] ~= nil then pause = tonumber(args[2]) end
  if pause > 0 then
    -- defined only when pacing: wrk checks for delay() after init()
    delay = function() return pause end
  end
  math.randomseed(os.time() + n)
  idx = math.random(n) - 1
end

function request()
  idx = idx % n + 1
  return reqs[idx]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"mean":%.1f,"max":%d,"stdev":%.1f,"p50":%d,"p90":%d,"p99":%d,"p999":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.max, latency.stdev,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9)))
end
