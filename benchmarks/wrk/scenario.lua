-- wrk script for every benchmark scenario.
-- usage: wrk -s scenario.lua <url> -- <mode> <event> <run id> [n] [users]
--   book    every request books a new user <run id>-<thread>-<k> on <event>, or, when n > 1,
--           on <event>-0 .. <event>-<n-1> in turn
--   mix     on <event>-0 .. <event>-<n-1>: books (50%), cancels (25%) and status reads (25%)
--           of users u1 .. u<users>
--   churn   books (50%) and cancels (50%) of users u1 .. u<users> on <event>
--   status  status reads of <event>-0 .. <event>-<n-1>
-- Answers of 500 and more are counted and printed as "Server errors: N" when the run ends
-- (wrk's own "Non-2xx" also counts the 404s a cancel of someone holding nothing gets).
local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_id", #threads)
end

function init(args)
  mode = args[1] or "book"
  event = args[2] or "bench"
  run_id = args[3] or "run"
  n = tonumber(args[4] or "1")
  users = tonumber(args[5] or "1000")
  counter = 0
  server_errors = 0
  math.randomseed(thread_id * 7919 + #run_id)
  headers = {["Content-Type"] = "application/json"}
end

local function body(user, event_id)
  return '{"userId":"' .. user .. '","eventId":"' .. event_id .. '"}'
end

function request()
  counter = counter + 1
  if mode == "book" then
    local event_id = event
    if n > 1 then
      event_id = event .. "-" .. (counter % n)
    end
    local user = run_id .. "-" .. thread_id .. "-" .. counter
    return wrk.format("POST", "/book", headers, body(user, event_id))
  elseif mode == "mix" then
    local event_id = event .. "-" .. math.random(0, n - 1)
    local dice = math.random()
    if dice < 0.25 then
      return wrk.format("GET", "/status/" .. event_id)
    end
    local path = dice < 0.75 and "/book" or "/cancel"
    return wrk.format("POST", path, headers, body("u" .. math.random(1, users), event_id))
  elseif mode == "churn" then
    local path = math.random() < 0.5 and "/book" or "/cancel"
    return wrk.format("POST", path, headers, body("u" .. math.random(1, users), event))
  end
  return wrk.format("GET", "/status/" .. event .. "-" .. math.random(0, n - 1))
end

function response(status, headers, body)
  if status >= 500 then
    server_errors = server_errors + 1
  end
end

function done(summary, latency, requests)
  local total = 0
  for _, thread in ipairs(threads) do
    total = total + thread:get("server_errors")
  end
  io.write("Server errors: " .. total .. "\n")
end
