#!lua flags=no-writes
-- status: the event's counters, read in one consistent step.
--
-- KEYS[1] meta      hash    total, available, seq; wlimit (the waiting-list limit, absent for
--                           none)
-- KEYS[2] holders   hash    userId -> bookingId
-- KEYS[3] waitlist  zset    userId scored by the seq of joining
-- KEYS[4] epoch     string  the partition's epoch marker (service/epoch.py)
--
-- Replies {"reset"} (the store lost its data: an unknown event would be a lie), {"unknown"}
-- or {"ok", total, available, booked, waiting[, limit]} (limit only when the event has one).
if #KEYS ~= 4 or #ARGV ~= 0 then
  return redis.error_reply('BADARG status takes 4 keys and no arguments')
end
local meta, holders, waitlist, epoch = KEYS[1], KEYS[2], KEYS[3], KEYS[4]

if redis.call('EXISTS', epoch) == 0 then
  return {'reset'}
end
local current = redis.call('HMGET', meta, 'total', 'available', 'wlimit')
if not current[1] then
  return {'unknown'}
end
-- A nil last element ends the reply there: no limit, five elements.
return {'ok', tonumber(current[1]), tonumber(current[2]),
        redis.call('HLEN', holders), redis.call('ZCARD', waitlist), tonumber(current[3])}
