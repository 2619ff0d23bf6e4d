-- A worker's heartbeat: create or refresh its lease.
--
-- KEYS[1] the lease hash, KEYS[2] the known-workers set
-- ARGV    worker id, incarnation, hostname, cpus, memory_mb, labels (JSON), ttl_ms, now_ms
--
-- Returns 1 when this incarnation's lease was refreshed, 0 when it was (re)created (first beat,
-- or the lease lapsed or Redis lost it), -1 when another live incarnation on a different host
-- holds the id (a second process must not impersonate a worker). A new incarnation on the same
-- host takes the lease over: that is the same node restarting its executor.
local lease = KEYS[1]
local wid, inc, host = ARGV[1], ARGV[2], ARGV[3]
local cur = redis.call('HMGET', lease, 'incarnation', 'hostname', 'bye')
if cur[1] and cur[1] ~= inc and cur[3] ~= '1' and cur[2] ~= host then
  return -1
end
local existed = (cur[1] == inc)
if not existed then
  redis.call('DEL', lease)
  redis.call('HSET', lease, 'started_at', ARGV[8])
end
redis.call('HSET', lease,
  'incarnation', inc, 'hostname', host, 'cpus', ARGV[4], 'memory_mb', ARGV[5],
  'labels', ARGV[6], 'heartbeat_at', ARGV[8])
redis.call('PEXPIRE', lease, ARGV[7])
redis.call('SADD', KEYS[2], wid)
if existed then
  return 1
end
return 0
