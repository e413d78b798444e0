#!lua flags=no-writes
-- user_state: where one user stands in an event.
--
-- KEYS[1] meta      hash    total, available, seq
-- KEYS[2] holders   hash    userId -> bookingId
-- KEYS[3] waitlist  zset    userId scored by the seq of joining
-- KEYS[4] epoch     string  the partition's epoch marker (service/epoch.py)
-- ARGV[1] userId    1-64 characters of A-Z a-z 0-9 . _ : @ -
--
-- Replies {"reset"} (the store lost its data), {"unknown"}, {"booked", bookingId},
-- {"waitlisted", position} (1-based) or {"none"}.
if #KEYS ~= 4 or #ARGV ~= 1 then
  return redis.error_reply('BADARG user_state takes 4 keys and 1 argument')
end
local meta, holders, waitlist, epoch = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local user_id = ARGV[1]
if #user_id == 0 or #user_id > 64 or string.find(user_id, '[^A-Za-z0-9._:@%-]') then
  return redis.error_reply('BADARG user_state: ids are 1-64 characters of A-Z a-z 0-9 . _ : @ -')
end

if redis.call('EXISTS', epoch) == 0 then
  return {'reset'}
end
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
