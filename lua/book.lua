#!lua
-- book: give the user a ticket, or a place at the end of the waiting list when sold out.
--
-- KEYS[1] meta      hash    total, available, seq; wlimit (the waiting-list limit, absent for
--                           none); frozen (set by the ledger writer when it quarantined a
--                           record of the event: its stream id)
-- KEYS[2] holders   hash    userId -> bookingId
-- KEYS[3] waitlist  zset    userId scored by the seq of joining
-- KEYS[4] outbox    stream  the event's outbox partition
-- KEYS[5] epoch     string  the partition's epoch marker (service/epoch.py)
-- ARGV[1] eventId   1-64 characters of A-Z a-z 0-9 . _ : @ -
-- ARGV[2] userId    the same
--
-- Replies
--   {"reset"}                               the epoch marker is missing: the store lost its
--                                           data (restore it from the ledger); nothing changed
--   {"unknown"}                             no such event
--   {"frozen"}                              the event is frozen: a change was asked for
--                                           (a retry is answered as ever); nothing changed
--   {"booked", bookingId, created}          created 1: booked now (outbox op=book)
--                                           created 0: held already; nothing changed
--   {"waitlisted", position, created}       position is 1-based; created 1: joined now
--                                           (outbox op=wait), 0: waiting already
--   {"waitlist_full", limit}                sold out, and `limit` users wait already (the
--                                           cap the event was opened with); nothing changed
--   error BADARG / CORRUPT                  a bad argument, or a counter (or the limit) that
--                                           is not an integer; nothing changed
--
-- Redis does not roll back a script that fails half way, so everything is checked before the
-- first write, and the first write is the XADD (the one key not read before: a key of the
-- wrong type fails it, and nothing has changed). Every later write goes to a key already read
-- (so of the right type) with values already checked, and cannot fail. The waiting-list
-- limit is one of those checks: read and validated, and a full list answered, before the XADD.
if #KEYS ~= 5 or #ARGV ~= 2 then
  return redis.error_reply('BADARG book takes 5 keys and 2 arguments')
end
local meta, holders, waitlist, outbox, epoch = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local event_id, user_id = ARGV[1], ARGV[2]
-- O(id length), at most 64 bytes each: a bounded scan, no allocation.
if #event_id == 0 or #event_id > 64 or string.find(event_id, '[^A-Za-z0-9._:@%-]')
    or #user_id == 0 or #user_id > 64 or string.find(user_id, '[^A-Za-z0-9._:@%-]') then
  return redis.error_reply('BADARG book: ids are 1-64 characters of A-Z a-z 0-9 . _ : @ -')
end

if redis.call('EXISTS', epoch) == 0 then
  return {'reset'}
end
-- A retry is answered first: one lookup, as cheap as before the checks came (a holder
-- exists only for an event that exists).
local booking_id = redis.call('HGET', holders, user_id)
if booking_id then
  return {'booked', booking_id, 0}
end
-- The limit comes with the counters (one lookup more in the same command); it is looked at
-- only when sold out.
local current = redis.call('HMGET', meta, 'available', 'seq', 'frozen', 'wlimit')
if not current[1] then
  return {'unknown'}
end
local left, seq = tonumber(current[1]), tonumber(current[2])
if not left or left < 0 or left % 1 ~= 0 or not seq or seq < 1 or seq % 1 ~= 0 then
  return redis.error_reply('CORRUPT book: available or seq of ' .. meta .. ' is not a count')
end
-- Nobody waits while tickets are left (a cancel hands its ticket to the head of the waiting
-- list at once), so only a sold-out event needs the waiting-list lookup.
if left == 0 then
  local rank = redis.call('ZRANK', waitlist, user_id)
  if rank then
    return {'waitlisted', rank + 1, 0}
  end
end
-- A frozen event takes no change; retries above changed nothing and are answered as ever.
if current[3] then
  return {'frozen'}
end
-- A new waiter needs a free place on a capped list; retries were answered above, so a user
-- already waiting is never refused. A cancel that promotes the head frees one place.
if left == 0 and current[4] then
  local limit = tonumber(current[4])
  if not limit or limit < 0 or limit % 1 ~= 0 then
    return redis.error_reply('CORRUPT book: wlimit of ' .. meta .. ' is not a count')
  end
  if redis.call('ZCARD', waitlist) >= limit then
    return {'waitlist_full', limit}
  end
end

seq = seq + 1
if left > 0 then
  booking_id = 'bk-' .. seq
  redis.call('XADD', outbox, '*', 'event', event_id, 'seq', seq, 'op', 'book',
             'user', user_id, 'booking', booking_id)
  redis.call('HSET', meta, 'available', left - 1, 'seq', seq)
  redis.call('HSET', holders, user_id, booking_id)
  return {'booked', booking_id, 1}
end

redis.call('XADD', outbox, '*', 'event', event_id, 'seq', seq, 'op', 'wait', 'user', user_id)
redis.call('HSET', meta, 'seq', seq)
redis.call('ZADD', waitlist, seq, user_id)
return {'waitlisted', redis.call('ZCARD', waitlist), 1}
