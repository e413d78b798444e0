#!lua
-- retire: forget a consumer of an outbox's ledger group that is gone and owns nothing.
-- A writer that died, or moved on to other partitions, stays listed in the group forever;
-- retiring it checks and deletes in one atomic step, so a consumer that reads again between
-- the check and the delete cannot lose the records it just read (XGROUP DELCONSUMER drops a
-- consumer's pending records with it).
--
-- KEYS[1] outbox    stream  the partition's outbox
-- ARGV[1] consumer group
-- ARGV[2] consumer name
-- ARGV[3] minimum idle time in milliseconds
--
-- Replies 1 when the consumer was deleted, else 0 (unknown, recently active, or owning
-- records).
local outbox, group, consumer, min_idle = KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3])
if not min_idle or min_idle < 0 then
  return redis.error_reply('ERR retire: minimum idle time must be a number >= 0')
end

local listed = redis.pcall('XINFO', 'CONSUMERS', outbox, group)
if type(listed) ~= 'table' or listed['err'] then  -- no such stream or group: nobody to retire
  return 0
end
for _, fields in ipairs(listed) do
  local info = {}
  for i = 1, #fields, 2 do
    info[fields[i]] = fields[i + 1]
  end
  if info['name'] == consumer then
    if tonumber(info['pending']) ~= 0 or tonumber(info['idle']) < min_idle then
      return 0
    end
    redis.call('XGROUP', 'DELCONSUMER', outbox, group, consumer)
    return 1
  end
end
return 0
