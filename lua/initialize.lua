#!lua
-- initialize: open an event with N tickets, or confirm it is already open.
--
-- KEYS[1] meta      hash    total, available, seq
-- KEYS[2] holders   hash    userId -> bookingId
-- KEYS[3] waitlist  zset    userId scored by the seq of joining
-- KEYS[4] outbox    stream  the event's outbox partition
-- KEYS[5] epoch     string  the partition's epoch marker (service/epoch.py)
-- ARGV[1] eventId        1-64 characters of A-Z a-z 0-9 . _ : @ -
-- ARGV[2] totalTickets   a decimal integer 0..10000000 (service.booking.MAX_TICKETS) written
--                        as Python writes it: no sign, no leading zero, no fraction
--
-- Replies {outcome, total, available, booked, waiting}
--   outcome "created"   the event was opened now (outbox: op=init, seq=1)
--   outcome "exists"    opened before with the same total; nothing changed
--   outcome "conflict"  opened before with another total; nothing changed
-- or {"reset"}: the epoch marker is missing (the store lost its data); nothing changed.
-- A bad argument is an error reply (BADARG); nothing changed. The first write is the XADD
-- (see book.lua).
if #KEYS ~= 5 or #ARGV ~= 2 then
  return redis.error_reply('BADARG initialize takes 5 keys and 2 arguments')
end
local meta, holders, waitlist, outbox, epoch = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local event_id, total = ARGV[1], ARGV[2]
if #event_id == 0 or #event_id > 64 or string.find(event_id, '[^A-Za-z0-9._:@%-]') then
  return redis.error_reply('BADARG initialize: ids are 1-64 characters of A-Z a-z 0-9 . _ : @ -')
end
if #total == 0 or #total > 8 or string.find(total, '%D') or (#total > 1 and string.sub(total, 1, 1) == '0')
    or tonumber(total) > 10000000 then
  return redis.error_reply('BADARG initialize: totalTickets is an integer 0..10000000')
end

if redis.call('EXISTS', epoch) == 0 then
  return {'reset'}
end
local current = redis.call('HMGET', meta, 'total', 'available')
if current[1] then
  local outcome = 'exists'
  if current[1] ~= total then
    outcome = 'conflict'
  end
  return {outcome, tonumber(current[1]), tonumber(current[2]),
          redis.call('HLEN', holders), redis.call('ZCARD', waitlist)}
end

redis.call('XADD', outbox, '*', 'event', event_id, 'seq', 1, 'op', 'init', 'total', total)
redis.call('HSET', meta, 'total', total, 'available', total, 'seq', 1)
return {'created', tonumber(total), tonumber(total), 0, 0}
