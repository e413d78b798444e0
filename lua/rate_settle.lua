#!lua
-- rate_settle: what one API worker admitted since its last settle, for each of up to 500
-- clients (under their rate-limit policies), added to each window's shared count; both
-- windows' totals read back in the same step, so the worker learns what the other workers
-- admitted (service/api/tally.py). One call carries a whole bucket of clients: a settle is
-- then a call per bucket, not a call per client.
--
-- KEYS[2i-1] previous  string  client i's count in the previous window (only read)
-- KEYS[2i]   current   string  client i's count in this window
-- ARGV[2i-1] admissions to add for client i, an integer 1..1000000000
-- ARGV[2i]   seconds client i's current count lives, an integer 1..1000000000 (at least two
--            windows: it is the next window's previous count)
--
-- Replies {previous total 1, current total 1, previous total 2, current total 2, ...}. The
-- clients are taken in order, as separate calls would take them: a client may come twice (a
-- window's admissions left over from before it ended, then the next window's, whose previous
-- count is the first one's current), and reads what the entries before it added. Every key
-- carries its clients' bucket as the hash tag, so the call touches one cluster slot.
--
-- Redis does not roll back a script that fails half way, so everything is checked before the
-- first write: the arguments (BADARG), then every key read once (a key of the wrong type fails
-- its GET) and every count it holds (CORRUPT: not a whole number); the totals are worked out
-- in a table, and only then written, one SET with its lifetime per current key. Nothing
-- changes on an error.
local n = #KEYS / 2
if #KEYS == 0 or #KEYS % 2 ~= 0 or #ARGV ~= #KEYS or n > 500 then
  return redis.error_reply(
    'BADARG rate_settle takes 2 keys and 2 arguments per client, 1..500 clients')
end
local function whole(text)
  return #text > 0 and #text <= 10 and not string.find(text, '%D')
    and string.sub(text, 1, 1) ~= '0' and tonumber(text) <= 1000000000
end
for i = 1, #ARGV do
  if not whole(ARGV[i]) then
    return redis.error_reply('BADARG rate_settle: admissions and lifetimes are 1..1000000000')
  end
end

-- Each key's count, read once; then as the entries before change it.
local counts = {}
local function count_of(key)
  local known = counts[key]
  if known == nil then
    local text = redis.call('GET', key)
    if text == false then
      known = 0
    else
      known = tonumber(text)
      if known == nil or known < 0 or known % 1 ~= 0 or known > 2^52 then
        return nil
      end
    end
    counts[key] = known
  end
  return known
end

local reply, written, ttls = {}, {}, {}
for i = 1, n do
  local previous_key, key = KEYS[2 * i - 1], KEYS[2 * i]
  local current = count_of(key)
  local previous = count_of(previous_key)
  if current == nil or previous == nil then
    return redis.error_reply('CORRUPT rate_settle: a count is not a whole number')
  end
  current = current + tonumber(ARGV[2 * i - 1])
  counts[key] = current
  if ttls[key] == nil then
    written[#written + 1] = key
  end
  ttls[key] = ARGV[2 * i]
  -- (read after the add: a client's previous key is never its current one, unless a caller
  -- passes the same key twice, which then reads its new total, as INCRBY then GET would)
  reply[2 * i - 1] = counts[previous_key]
  reply[2 * i] = current
end

for _, key in ipairs(written) do
  redis.call('SET', key, string.format('%d', counts[key]), 'EX', ttls[key])
end
return reply
