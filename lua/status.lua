#!lua flags=no-writes
-- status: the event's counters, read in one consistent step.
--
-- KEYS[1] meta      hash    total, available, seq
-- KEYS[2] holders   hash    userId -> bookingId
-- KEYS[3] waitlist  zset    userId scored by the seq of joining
--
-- Replies {"unknown"} or {"ok", total, available, booked, waiting}
local meta, holders, waitlist = KEYS[1], KEYS[2], KEYS[3]

local current = redis.call('HMGET', meta, 'total', 'available')
if not current[1] then
  return {'unknown'}
end
return {'ok', tonumber(current[1]), tonumber(current[2]),
        redis.call('HLEN', holders), redis.call('ZCARD', waitlist)}
