-- wrk script of benchmarks/auth.py: POST /book on one event, k requests per user, each user new.
-- usage: wrk -s tokens.lua <url> -- <event> <k> <run id> [tokens file]
--   With a tokens file (one JWT per line), thread t of T sends the tokens t, t+T, t+2T, ...,
--   each k times, as `Authorization: Bearer`, the body naming no user; past the file's end it
--   counts the wrap in "Token wraps: N" (the run then reuses tokens: a wrong figure).
--   Without one, the body names the user <run id>-<t>-<j> (auth off), same pattern.
-- Answers of 400 and more are counted and printed as "Refused: N" when the run ends.
local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_id", #threads)
  thread:set("thread_count", 0)
end

function init(args)
  event = args[1] or "bench"
  k = tonumber(args[2] or "1")
  run_id = args[3] or "run"
  tokens = nil
  if args[4] then
    tokens = {}
    for line in io.lines(args[4]) do
      table.insert(tokens, line)
    end
  end
  counter = 0
  refused = 0
  wraps = 0
  base_headers = {["Content-Type"] = "application/json"}
end

function request()
  local user = math.floor(counter / k)
  counter = counter + 1
  if tokens == nil then
    local body = '{"userId":"' .. run_id .. '-' .. thread_id .. '-' .. user .. '","eventId":"' .. event .. '"}'
    return wrk.format("POST", "/book", base_headers, body)
  end
  local index = thread_id + user * 2  -- benchmarks/auth.py runs wrk -t2
  if index > #tokens then
    wraps = wraps + 1
    index = (index - 1) % #tokens + 1
  end
  local headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. tokens[index]}
  return wrk.format("POST", "/book", headers, '{"eventId":"' .. event .. '"}')
end

function response(status, headers, body)
  if status >= 400 then
    refused = refused + 1
  end
end

function done(summary, latency, requests)
  local total_refused, total_wraps = 0, 0
  for _, thread in ipairs(threads) do
    total_refused = total_refused + thread:get("refused")
    total_wraps = total_wraps + thread:get("wraps")
  end
  io.write("Refused: " .. total_refused .. "\n")
  io.write("Token wraps: " .. total_wraps .. "\n")
end
