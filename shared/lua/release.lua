-- Release one job's allocation; the idempotent mirror of allocate.lua.
--
-- KEYS[1] allocations hash, KEYS[2] cluster allocated cpus, KEYS[3] cluster allocated memory_mb,
-- KEYS[4] the worker's allocated hash
-- ARGV    job id, attempt, worker id
--
-- Returns 1 when released, 0 when there was nothing to release (a repeat is a no-op),
-- -1 when a different attempt holds the allocation, -2 when it is held on another worker
-- (the caller named the wrong worker; nothing is changed).
local job, attempt, worker = ARGV[1], ARGV[2], ARGV[3]

local rec = redis.call('HGET', KEYS[1], job)
if not rec then
  return 0
end
local w, c, m, a = string.match(rec, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
if a ~= attempt then
  return -1
end
if w ~= worker then
  return -2
end
redis.call('HINCRBY', KEYS[4], 'cpus', 0 - tonumber(c))
redis.call('HINCRBY', KEYS[4], 'memory_mb', 0 - tonumber(m))
redis.call('DECRBY', KEYS[2], tonumber(c))
redis.call('DECRBY', KEYS[3], tonumber(m))
redis.call('HDEL', KEYS[1], job)
return 1
