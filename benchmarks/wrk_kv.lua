-- wrk script: one KV op per HTTP request, fresh keys; counts replies that are not "OK".
-- wrk -s wrk_kv.lua URL -- OP PREFIX VALUE_BYTES   (OP: put, get or echo; get reads the
-- keys PREFIX-1 .. PREFIX-100, which must exist)
local op, prefix, value = "put", "w", "x"
local counter = 0
thread_id = 0
local threads = {}
not_ok = 0

function setup(thread)
  thread:set("thread_id", #threads)
  table.insert(threads, thread)
end

function init(args)
  op = args[1] or "put"
  prefix = args[2] or "w"
  value = string.rep("x", tonumber(args[3] or "16"))
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  counter = counter + 1
  local key = string.format("%s-%d-%d", prefix, thread_id, counter)
  if op == "get" then  -- the keys PREFIX-1 .. PREFIX-100, which must exist
    key = string.format("%s-%d", prefix, counter % 100 + 1)
    return wrk.format(nil, "/get", nil, string.format('{"key":"%s"}', key))
  end
  local body = string.format('{"key":"%s","value":"%s","version":0}', key, value)
  return wrk.format(nil, "/" .. op, nil, body)
end

function response(status, headers, body)
  if status ~= 200 or not string.find(body, '"OK"', 1, true) then
    if op ~= "echo" or status ~= 200 then
      not_ok = not_ok + 1
    end
  end
end

function done(summary, latency, requests)
  local bad = 0
  for _, thread in ipairs(threads) do
    bad = bad + thread:get("not_ok")
  end
  io.write(string.format(
    '{"requests":%d,"seconds":%.3f,"not_ok":%d,"socket_errors":%d,' ..
    '"p50_ms":%.3f,"p90_ms":%.3f,"p99_ms":%.3f}\n',
    summary.requests, summary.duration / 1e6, bad,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000))
end
