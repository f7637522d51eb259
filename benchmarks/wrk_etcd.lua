-- wrk script: one etcd put per HTTP request through etcd's JSON gateway (grpc-gateway,
-- POST /v3/kv/put with base64 key and value), fresh keys; counts replies that are not 200.
-- wrk -s wrk_etcd.lua URL -- PREFIX VALUE_BYTES
local prefix, value = "w", "x"
local counter = 0
thread_id = 0
local threads = {}
not_ok = 0

local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

local function base64(data)
  local out = {}
  for i = 1, #data, 3 do
    local a, b, c = data:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local k = 4
    if not b then k = 2 elseif not c then k = 3 end
    for j = 1, 4 do
      if j <= k then
        local index = math.floor(n / 2 ^ (6 * (4 - j))) % 64
        out[#out + 1] = alphabet:sub(index + 1, index + 1)
      else
        out[#out + 1] = "="
      end
    end
  end
  return table.concat(out)
end

local encoded_value = ""

function setup(thread)
  thread:set("thread_id", #threads)
  table.insert(threads, thread)
end

function init(args)
  prefix = args[1] or "w"
  value = string.rep("x", tonumber(args[2] or "16"))
  encoded_value = base64(value)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  counter = counter + 1
  local key = base64(string.format("%s-%d-%d", prefix, thread_id, counter))
  local body = string.format('{"key":"%s","value":"%s"}', key, encoded_value)
  return wrk.format(nil, "/v3/kv/put", nil, body)
end

function response(status, headers, body)
  if status ~= 200 or not string.find(body, '"revision"', 1, true) then
    not_ok = not_ok + 1
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
