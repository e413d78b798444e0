#!lua
-- lease: a ledger writer takes, keeps or gives back its exclusive hold on one outbox partition.
-- One writer at a time drains a partition, so its records reach PostgreSQL in stream order.
--
-- KEYS[1] lease     string  the holder's name, with a time to live
-- ARGV[1] writer name
-- ARGV[2] time to live in milliseconds
-- ARGV[3] "hold" (take it if free, renew it if ours) or "release" (drop it if ours)
--
-- Replies 1 when the caller holds the lease afterwards, else 0.
local lease, writer, ttl, mode = KEYS[1], ARGV[1], ARGV[2], ARGV[3]

local holder = redis.call('GET', lease)
if mode == 'release' then
  if holder == writer then
    redis.call('DEL', lease)
  end
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
