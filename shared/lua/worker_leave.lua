-- Announce that a worker incarnation has left, exactly once.
--
-- KEYS[1] lease, KEYS[2] member hash, KEYS[3] live set, KEYS[4] known set,
-- KEYS[5] cluster total cpus, KEYS[6] cluster total memory_mb, KEYS[7] worker-left stream
-- ARGV    worker id, incarnation, reason (shutdown | expired | restarted), payload, now_ms
--
-- The reason is re-checked against the lease inside the script: `shutdown` needs this
-- incarnation's lease marked `bye` (the lease is then removed), `expired` needs the lease gone,
-- `restarted` needs a lease of another incarnation. Returns 1 when announced, 0 otherwise.
local wid, inc, reason = ARGV[1], ARGV[2], ARGV[3]
local m = redis.call('HMGET', KEYS[2], 'incarnation', 'state', 'cpus', 'memory_mb')
if m[1] ~= inc or not (m[2] == 'ready' or m[2] == 'draining') then
  return 0
end
local l = redis.call('HMGET', KEYS[1], 'incarnation', 'bye')
if reason == 'shutdown' then
  if l[1] ~= inc or l[2] ~= '1' then
    return 0
  end
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[4], wid)
elseif reason == 'expired' then
  if l[1] then
    return 0
  end
  redis.call('SREM', KEYS[4], wid)
elseif reason == 'restarted' then
  if not l[1] or l[1] == inc then
    return 0
  end
else
  return redis.error_reply('unknown leave reason ' .. reason)
end
redis.call('HSET', KEYS[2], 'state', 'down', 'left_at', ARGV[5], 'left_reason', reason)
redis.call('SREM', KEYS[3], wid)
redis.call('DECRBY', KEYS[5], tonumber(m[3]))
redis.call('DECRBY', KEYS[6], tonumber(m[4]))
redis.call('XADD', KEYS[7], '*', 'e', ARGV[4])
return 1
