-- wrk script: every request books a new user on one event.
-- usage: wrk -s book.lua <url> -- <eventId> <runId>
-- User ids are <runId>-<thread>-<n>, so runs and threads never collide.
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("thread_id", threads)
end

function init(args)
  event_id = args[1] or "bench"
  run_id = args[2] or "run"
  counter = 0
  headers = {["Content-Type"] = "application/json"}
end

function request()
  counter = counter + 1
  local body = '{"userId":"' .. run_id .. '-' .. thread_id .. '-' .. counter ..
               '","eventId":"' .. event_id .. '"}'
  return wrk.format("POST", "/book", headers, body)
end
