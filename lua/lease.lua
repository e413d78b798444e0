#!lua
-- lease: a ledger writer takes, keeps or gives back its exclusive hold on one outbox partition.
-- One writer at a time drains a partition, so its records reach PostgreSQL in stream order.
--
-- KEYS[1] lease     string  the holder's name, with a time to live
-- KEYS[2] epoch     string  the partition's epoch marker (service/epoch.py)
-- ARGV[1] writer name (1-255 bytes)
-- ARGV[2] time to live in milliseconds, an integer 1..86400000
-- ARGV[3] "hold" (take it if free, renew it if ours) or "release" (drop it if ours)
--
-- Replies 1 when the caller holds the lease afterwards, else 0. A store without its epoch
-- marker (it lost its data) grants no lease until `boxoffice restore`. A bad argument is an
-- error reply (BADARG), and the lease is left as it was.
if #KEYS ~= 2 or #ARGV ~= 3 then
  return redis.error_reply('BADARG lease takes 2 keys and 3 arguments')
end
local lease, epoch = KEYS[1], KEYS[2]
local writer, ttl, mode = ARGV[1], ARGV[2], ARGV[3]
if #writer == 0 or #writer > 255 then
  return redis.error_reply('BADARG lease: the writer name is 1-255 bytes')
end
if #ttl == 0 or #ttl > 8 or string.find(ttl, '%D') or string.sub(ttl, 1, 1) == '0'
    or tonumber(ttl) > 86400000 then
  return redis.error_reply('BADARG lease: the time to live is 1..86400000 milliseconds')
end
if mode ~= 'hold' and mode ~= 'release' then
  return redis.error_reply('BADARG lease: the mode is hold or release')
end

local holder = redis.call('GET', lease)
if mode == 'release' then
  if holder == writer then
    redis.call('DEL', lease)
  end
  return 0
end
if redis.call('EXISTS', epoch) == 0 then
  return 0
end
if not holder then
  redis.call('SET', lease, writer, 'PX', ttl)
  return 1
end
if holder == writer then
  redis.call('PEXPIRE', lease, ttl)
  return 1
end
return 0
