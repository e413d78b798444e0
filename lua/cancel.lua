#!lua
-- cancel: give back the user's ticket, handing it at once to the head of the waiting list;
-- or take the user off the waiting list.
--
-- KEYS[1] meta      hash    total, available, seq
-- KEYS[2] holders   hash    userId -> bookingId
-- KEYS[3] waitlist  zset    userId scored by the seq of joining
-- KEYS[4] outbox    stream  the event's outbox partition
-- ARGV[1] eventId
-- ARGV[2] userId
--
-- Replies
--   {"unknown"}                                     no such event
--   {"none"}                                        neither booked nor waiting; nothing changed
--   {"cancelled", bookingId}                        outbox op=cancel; the ticket is free again
--   {"cancelled", bookingId, promotedUserId, promotedBookingId}
--                                                   outbox op=cancel, then op=promote
--   {"left_waitlist"}                               outbox op=leave
local meta, holders, waitlist, outbox = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local event_id, user_id = ARGV[1], ARGV[2]

if redis.call('EXISTS', meta) == 0 then
  return {'unknown'}
end

local booking_id = redis.call('HGET', holders, user_id)
if booking_id then
  redis.call('HDEL', holders, user_id)
  local seq = redis.call('HINCRBY', meta, 'seq', 1)
  redis.call('XADD', outbox, '*', 'event', event_id, 'seq', seq, 'op', 'cancel',
             'user', user_id, 'booking', booking_id)
  local head = redis.call('ZPOPMIN', waitlist)
  if head[1] then
    seq = redis.call('HINCRBY', meta, 'seq', 1)
    local promoted_id = 'bk-' .. seq
    redis.call('HSET', holders, head[1], promoted_id)
    redis.call('XADD', outbox, '*', 'event', event_id, 'seq', seq, 'op', 'promote',
               'user', head[1], 'booking', promoted_id)
    return {'cancelled', booking_id, head[1], promoted_id}
  end
  redis.call('HINCRBY', meta, 'available', 1)
  return {'cancelled', booking_id}
end

if redis.call('ZREM', waitlist, user_id) == 1 then
  local seq = redis.call('HINCRBY', meta, 'seq', 1)
  redis.call('XADD', outbox, '*', 'event', event_id, 'seq', seq, 'op', 'leave', 'user', user_id)
  return {'left_waitlist'}
end
return {'none'}
