#!lua
-- initialize: open an event with N tickets, or confirm it is already open.
--
-- KEYS[1] meta      hash    total, available, seq
-- KEYS[2] holders   hash    userId -> bookingId
-- KEYS[3] waitlist  zset    userId scored by the seq of joining
-- KEYS[4] outbox    stream  the event's outbox partition
-- ARGV[1] eventId
-- ARGV[2] totalTickets (decimal integer, validated by the caller)
--
-- Replies {outcome, total, available, booked, waiting}
--   outcome "created"   the event was opened now (outbox: op=init, seq=1)
--   outcome "exists"    opened before with the same total; nothing changed
--   outcome "conflict"  opened before with another total; nothing changed
local meta, holders, waitlist, outbox = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local event_id, total = ARGV[1], ARGV[2]

local current = redis.call('HMGET', meta, 'total', 'available')
if current[1] then
  local outcome = 'exists'
  if current[1] ~= total then
    outcome = 'conflict'
  end
  return {outcome, tonumber(current[1]), tonumber(current[2]),
          redis.call('HLEN', holders), redis.call('ZCARD', waitlist)}
end

redis.call('HSET', meta, 'total', total, 'available', total, 'seq', 1)
redis.call('XADD', outbox, '*', 'event', event_id, 'seq', 1, 'op', 'init', 'total', total)
return {'created', tonumber(total), tonumber(total), 0, 0}
