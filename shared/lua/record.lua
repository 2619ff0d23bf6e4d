-- Record one allocation that PostgreSQL says is held by a RUNNING job, without a capacity check.
--
-- KEYS[1] allocations hash, KEYS[2] cluster allocated cpus, KEYS[3] cluster allocated memory_mb,
-- KEYS[4] the worker's allocated hash
-- ARGV    job id, worker, cpus, memory_mb, attempt
--
-- The job's processes are already consuming the worker: the record makes Redis say so (which
-- keeps new placements off that capacity). A no-op when any record for the job exists.
-- Returns 1 when recorded, 0 otherwise.
local job = ARGV[1]
if redis.call('HEXISTS', KEYS[1], job) == 1 then
  return 0
end
local cpus, mem = tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('HINCRBY', KEYS[4], 'cpus', cpus)
redis.call('HINCRBY', KEYS[4], 'memory_mb', mem)
redis.call('INCRBY', KEYS[2], cpus)
redis.call('INCRBY', KEYS[3], mem)
redis.call('HSET', KEYS[1], job, ARGV[2] .. '|' .. cpus .. '|' .. mem .. '|' .. ARGV[5])
return 1
