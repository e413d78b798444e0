#!lua
-- book: give the user a ticket, or a place at the end of the waiting list when sold out.
--
-- KEYS[1] meta      hash    total, available, seq
-- KEYS[2] holders   hash    userId -> bookingId
-- KEYS[3] waitlist  zset    userId scored by the seq of joining
-- KEYS[4] outbox    stream  the event's outbox partition
-- ARGV[1] eventId
-- ARGV[2] userId
--
-- Replies
--   {"unknown"}                             no such event
--   {"booked", bookingId, created}          created 1: booked now (outbox op=book)
--                                           created 0: held already; nothing changed
--   {"waitlisted", position, created}       position is 1-based; created 1: joined now
--                                           (outbox op=wait), 0: waiting already
local meta, holders, waitlist, outbox = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local event_id, user_id = ARGV[1], ARGV[2]

local available = redis.call('HGET', meta, 'available')
if not available then
  return {'unknown'}
end

local booking_id = redis.call('HGET', holders, user_id)
if booking_id then
  return {'booked', booking_id, 0}
end
-- Nobody waits while tickets are left (a cancel hands its ticket to the head of the waiting
-- list at once), so only a sold-out event needs the waiting-list lookup.
local left = tonumber(available)
if left == 0 then
  local rank = redis.call('ZRANK', waitlist, user_id)
  if rank then
    return {'waitlisted', rank + 1, 0}
  end
end

local seq = redis.call('HINCRBY', meta, 'seq', 1)
if left > 0 then
  booking_id = 'bk-' .. seq
  redis.call('HINCRBY', meta, 'available', -1)
  redis.call('HSET', holders, user_id, booking_id)
  redis.call('XADD', outbox, '*', 'event', event_id, 'seq', seq, 'op', 'book',
             'user', user_id, 'booking', booking_id)
  return {'booked', booking_id, 1}
end

redis.call('ZADD', waitlist, seq, user_id)
redis.call('XADD', outbox, '*', 'event', event_id, 'seq', seq, 'op', 'wait', 'user', user_id)
return {'waitlisted', redis.call('ZCARD', waitlist), 1}
