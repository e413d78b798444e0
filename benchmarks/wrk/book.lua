-- wrk script: every request books a new user.
-- usage: wrk -s book.lua <url> -- <eventId> <runId> [events]
-- With events > 1 the requests go round-robin over <eventId>-0 .. <eventId>-<events-1>.
-- User ids are <runId>-<thread>-<n>, so runs and threads never collide.
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("thread_id", threads)
end

function init(args)
  event_id = args[1] or "bench"
  run_id = args[2] or "run"
  events = tonumber(args[3] or "1")
  counter = 0
  headers = {["Content-Type"] = "application/json"}
end

function request()
  counter = counter + 1
  local event = event_id
  if events > 1 then
    event = event_id .. "-" .. (counter % events)
  end
  local body = '{"userId":"' .. run_id .. '-' .. thread_id .. '-' .. counter ..
               '","eventId":"' .. event .. '"}'
  return wrk.format("POST", "/book", headers, body)
end
