-- Rebuild allocation records from PostgreSQL after Redis lost them, then open the epoch.
--
-- KEYS[1] allocations hash, KEYS[2] cluster allocated cpus, KEYS[3] cluster allocated memory_mb,
-- KEYS[4] the allocation epoch, then one worker allocated hash per record (same order)
-- ARGV    epoch value, then per record: job id, worker, cpus, memory_mb, attempt
--
-- Runs only while the epoch is missing (so no allocate.lua can succeed meanwhile, and a second
-- reconciler replica finds nothing to do). A record that exists is left alone. Returns the
-- number of records restored, or -1 when the epoch was already present.
if redis.call('EXISTS', KEYS[4]) == 1 then
  return -1
end
local n = 0
for i = 0, (#ARGV - 1) / 5 - 1 do
  local job, worker = ARGV[2 + 5 * i], ARGV[3 + 5 * i]
  local cpus, mem, attempt = tonumber(ARGV[4 + 5 * i]), tonumber(ARGV[5 + 5 * i]), ARGV[6 + 5 * i]
  if redis.call('HEXISTS', KEYS[1], job) == 0 then
    local alloc = KEYS[5 + i]
    redis.call('HINCRBY', alloc, 'cpus', cpus)
    redis.call('HINCRBY', alloc, 'memory_mb', mem)
    redis.call('INCRBY', KEYS[2], cpus)
    redis.call('INCRBY', KEYS[3], mem)
    redis.call('HSET', KEYS[1], job, worker .. '|' .. cpus .. '|' .. mem .. '|' .. attempt)
    n = n + 1
  end
end
redis.call('SET', KEYS[4], ARGV[1])
return n
