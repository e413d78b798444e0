#!lua flags=no-writes
-- user_state: where one user stands in an event.
--
-- KEYS[1] meta      hash    total, available, seq
-- KEYS[2] holders   hash    userId -> bookingId
-- KEYS[3] waitlist  zset    userId scored by the seq of joining
-- ARGV[1] userId
--
-- Replies {"unknown"}, {"booked", bookingId}, {"waitlisted", position} (1-based) or {"none"}
local meta, holders, waitlist = KEYS[1], KEYS[2], KEYS[3]
local user_id = ARGV[1]

if redis.call('EXISTS', meta) == 0 then
  return {'unknown'}
end
local booking_id = redis.call('HGET', holders, user_id)
if booking_id then
  return {'booked', booking_id}
end
local rank = redis.call('ZRANK', waitlist, user_id)
if rank then
  return {'waitlisted', rank + 1}
end
return {'none'}
