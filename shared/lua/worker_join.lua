-- Announce a worker incarnation exactly once: membership change and event in one atomic step.
--
-- KEYS[1] lease, KEYS[2] member hash, KEYS[3] live set, KEYS[4] drained set,
-- KEYS[5] cluster total cpus, KEYS[6] cluster total memory_mb, KEYS[7] worker-joined stream
-- ARGV    worker id, incarnation, event payload (JSON), now_ms
--
-- Returns 1 when announced, 0 when there is nothing to do (lease gone, saying goodbye, or this
-- incarnation already announced: a second registry replica lands here), -1 when the previous
-- incarnation is still live (the caller must announce its departure first).
local wid, inc = ARGV[1], ARGV[2]
local l = redis.call('HMGET', KEYS[1], 'incarnation', 'bye', 'cpus', 'memory_mb', 'hostname',
  'labels')
if l[1] ~= inc or l[2] == '1' then
  return 0
end
local m = redis.call('HMGET', KEYS[2], 'incarnation', 'state')
local live = m[2] == 'ready' or m[2] == 'draining'
if live and m[1] == inc then
  return 0
end
if live then
  return -1
end
local state = 'ready'
if redis.call('SISMEMBER', KEYS[4], wid) == 1 then
  state = 'draining'
end
redis.call('HSET', KEYS[2], 'incarnation', inc, 'state', state, 'cpus', l[3],
  'memory_mb', l[4], 'hostname', l[5], 'labels', l[6], 'joined_at', ARGV[4],
  'left_at', '', 'left_reason', '')
redis.call('SADD', KEYS[3], wid)
redis.call('INCRBY', KEYS[5], tonumber(l[3]))
redis.call('INCRBY', KEYS[6], tonumber(l[4]))
redis.call('XADD', KEYS[7], '*', 'e', ARGV[3])
return 1
