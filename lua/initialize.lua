#!lua
-- initialize: open an event with N tickets (and, if asked, a cap on its waiting list), or
-- confirm it is already open.
--
-- KEYS[1] meta      hash    total, available, seq; wlimit (the waiting-list limit, absent for
--                           none)
-- KEYS[2] holders   hash    userId -> bookingId
-- KEYS[3] waitlist  zset    userId scored by the seq of joining
-- KEYS[4] outbox    stream  the event's outbox partition
-- KEYS[5] epoch     string  the partition's epoch marker (service/epoch.py)
-- ARGV[1] eventId        1-64 characters of A-Z a-z 0-9 . _ : @ -
-- ARGV[2] totalTickets   a decimal integer 0..10000000 (service.booking.MAX_TICKETS) written
--                        as Python writes it: no sign, no leading zero, no fraction
-- ARGV[3] waitlistLimit  optional: the same form, 0..10000000 (MAX_WAITLIST); '' or absent:
--                        no limit
-- ARGV[4] admin          optional: who opened the event, 1-128 bytes, no control characters;
--                        '' or absent: nobody known. Recorded, never compared.
--
-- Replies {outcome, total, available, booked, waiting[, limit]} (limit only when there is one)
--   outcome "created"   the event was opened now (outbox: op=init, seq=1)
--   outcome "exists"    opened before with the same total and limit; nothing changed
--   outcome "conflict"  opened before with another total or limit; nothing changed
-- or {"reset"}: the epoch marker is missing (the store lost its data); nothing changed.
-- A bad argument is an error reply (BADARG); nothing changed. The first write is the XADD
-- (see book.lua).
--
-- The init record is format 1 (no `v`) unless it carries a field format 1 lacks: then it is
-- format 2 (`v` first), with `limit` and/or `by` (ledger/records.py), so a writer too old to
-- know them quarantines the record instead of dropping the limit.
if #KEYS ~= 5 or #ARGV < 2 or #ARGV > 4 then
  return redis.error_reply('BADARG initialize takes 5 keys and 2 to 4 arguments')
end
local meta, holders, waitlist, outbox, epoch = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local event_id, total, limit, admin = ARGV[1], ARGV[2], ARGV[3] or '', ARGV[4] or ''
if #event_id == 0 or #event_id > 64 or string.find(event_id, '[^A-Za-z0-9._:@%-]') then
  return redis.error_reply('BADARG initialize: ids are 1-64 characters of A-Z a-z 0-9 . _ : @ -')
end
if #total == 0 or #total > 8 or string.find(total, '%D') or (#total > 1 and string.sub(total, 1, 1) == '0')
    or tonumber(total) > 10000000 then
  return redis.error_reply('BADARG initialize: totalTickets is an integer 0..10000000')
end
if limit ~= '' and (#limit > 8 or string.find(limit, '%D')
    or (#limit > 1 and string.sub(limit, 1, 1) == '0') or tonumber(limit) > 10000000) then
  return redis.error_reply('BADARG initialize: waitlistLimit is an integer 0..10000000 or empty')
end
if #admin > 128 or string.find(admin, '%c') then
  return redis.error_reply('BADARG initialize: admin is at most 128 bytes, no control characters')
end

if redis.call('EXISTS', epoch) == 0 then
  return {'reset'}
end
local current = redis.call('HMGET', meta, 'total', 'available', 'wlimit')
if current[1] then
  local outcome = 'exists'
  if current[1] ~= total or (current[3] or '') ~= limit then
    outcome = 'conflict'
  end
  -- A nil last element ends the reply there: no limit, five elements.
  return {outcome, tonumber(current[1]), tonumber(current[2]),
          redis.call('HLEN', holders), redis.call('ZCARD', waitlist), tonumber(current[3])}
end

local record = {'event', event_id, 'seq', 1, 'op', 'init', 'total', total}
if limit ~= '' then
  table.insert(record, 'limit')
  table.insert(record, limit)
end
if admin ~= '' then
  table.insert(record, 'by')
  table.insert(record, admin)
end
if #record > 8 then
  table.insert(record, 1, 'v')
  table.insert(record, 2, 2)
end
redis.call('XADD', outbox, '*', unpack(record))
if limit ~= '' then
  redis.call('HSET', meta, 'total', total, 'available', total, 'seq', 1, 'wlimit', limit)
else
  redis.call('HSET', meta, 'total', total, 'available', total, 'seq', 1)
end
return {'created', tonumber(total), tonumber(total), 0, 0, tonumber(limit)}
