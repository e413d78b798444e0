#!lua
-- rate_settle: what one API worker admitted for one client under one rate-limit policy since
-- its last settle, added to the window's shared count; both windows' totals read back in the
-- same step, so the worker learns what the other workers admitted (service/api/tally.py).
--
-- KEYS[1] previous  string  the client's count in the previous window (only read)
-- KEYS[2] current   string  the client's count in this window
-- ARGV[1] admissions to add, an integer 1..1000000000
-- ARGV[2] seconds the current count lives, an integer 1..1000000000 (at least two windows:
--         it is the next window's previous count)
--
-- Replies {previous total, current total}. Both keys carry the policy and client as their
-- hash tag, so the call touches one cluster slot. A bad argument is an error reply (BADARG)
-- and changes nothing.
if #KEYS ~= 2 or #ARGV ~= 2 then
  return redis.error_reply('BADARG rate_settle takes 2 keys and 2 arguments')
end
local function whole(text)
  return #text > 0 and #text <= 10 and not string.find(text, '%D')
    and string.sub(text, 1, 1) ~= '0' and tonumber(text) <= 1000000000
end
if not whole(ARGV[1]) or not whole(ARGV[2]) then
  return redis.error_reply('BADARG rate_settle: admissions and lifetime are 1..1000000000')
end

local current = redis.call('INCRBY', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[2])
local previous = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
return {previous, current}
