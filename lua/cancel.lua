#!lua
-- cancel: give back the user's ticket, handing it at once to the head of the waiting list;
-- or take the user off the waiting list.
--
-- KEYS[1] meta      hash    total, available, seq; frozen (set by the ledger writer when it
--                           quarantined a record of the event: its stream id)
-- KEYS[2] holders   hash    userId -> bookingId
-- KEYS[3] waitlist  zset    userId scored by the seq of joining
-- KEYS[4] outbox    stream  the event's outbox partition
-- KEYS[5] epoch     string  the partition's epoch marker (service/epoch.py)
-- ARGV[1] eventId   1-64 characters of A-Z a-z 0-9 . _ : @ -
-- ARGV[2] userId    the same
--
-- Replies
--   {"reset"}                                       the epoch marker is missing: the store
--                                                   lost its data; nothing changed
--   {"unknown"}                                     no such event
--   {"frozen"}                                      the event is frozen; nothing changed
--   {"none"}                                        neither booked nor waiting; nothing changed
--   {"cancelled", bookingId}                        outbox op=cancel; the ticket is free again
--   {"cancelled", bookingId, promotedUserId, promotedBookingId}
--                                                   outbox op=cancel, then op=promote
--   {"left_waitlist"}                               outbox op=leave
--   error BADARG / CORRUPT                          nothing changed
--
-- Everything is read and checked before the first write, which is the XADD (see book.lua).
if #KEYS ~= 5 or #ARGV ~= 2 then
  return redis.error_reply('BADARG cancel takes 5 keys and 2 arguments')
end
local meta, holders, waitlist, outbox, epoch = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local event_id, user_id = ARGV[1], ARGV[2]
if #event_id == 0 or #event_id > 64 or string.find(event_id, '[^A-Za-z0-9._:@%-]')
    or #user_id == 0 or #user_id > 64 or string.find(user_id, '[^A-Za-z0-9._:@%-]') then
  return redis.error_reply('BADARG cancel: ids are 1-64 characters of A-Z a-z 0-9 . _ : @ -')
end

if redis.call('EXISTS', epoch) == 0 then
  return {'reset'}
end
local current = redis.call('HMGET', meta, 'available', 'seq', 'frozen')
if not current[1] then
  return {'unknown'}
end
if current[3] then
  return {'frozen'}
end
local left, seq = tonumber(current[1]), tonumber(current[2])
if not left or left < 0 or left % 1 ~= 0 or not seq or seq < 1 or seq % 1 ~= 0 then
  return redis.error_reply('CORRUPT cancel: available or seq of ' .. meta .. ' is not a count')
end

local booking_id = redis.call('HGET', holders, user_id)
if booking_id then
  -- The head of the waiting list, read before any write (ZPOPMIN would be a write that can
  -- fail on a key of the wrong type after the outbox has the cancel).
  local head = redis.call('ZRANGE', waitlist, 0, 0)[1]
  seq = seq + 1
  redis.call('XADD', outbox, '*', 'event', event_id, 'seq', seq, 'op', 'cancel',
             'user', user_id, 'booking', booking_id)
  if head then
    local promoted_id = 'bk-' .. (seq + 1)
    redis.call('XADD', outbox, '*', 'event', event_id, 'seq', seq + 1, 'op', 'promote',
               'user', head, 'booking', promoted_id)
    redis.call('HSET', meta, 'seq', seq + 1)
    redis.call('HDEL', holders, user_id)
    redis.call('HSET', holders, head, promoted_id)
    redis.call('ZREM', waitlist, head)
    return {'cancelled', booking_id, head, promoted_id}
  end
  redis.call('HSET', meta, 'available', left + 1, 'seq', seq)
  redis.call('HDEL', holders, user_id)
  return {'cancelled', booking_id}
end

if redis.call('ZSCORE', waitlist, user_id) then
  seq = seq + 1
  redis.call('XADD', outbox, '*', 'event', event_id, 'seq', seq, 'op', 'leave', 'user', user_id)
  redis.call('HSET', meta, 'seq', seq)
  redis.call('ZREM', waitlist, user_id)
  return {'left_waitlist'}
end
return {'none'}
