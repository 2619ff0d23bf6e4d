-- Place one job on the first candidate worker with room, atomically.
--
-- KEYS[1]  allocations hash (job id -> "worker|cpus|memory_mb|attempt")
-- KEYS[2]  cluster allocated cpus      KEYS[3]  cluster allocated memory_mb
-- KEYS[4]  the allocation epoch: present once the reconciler has (re)built the records from
--          PostgreSQL. After a Redis restart without persistence it is missing, and nothing is
--          placed until it is back: the empty counters would otherwise over-commit workers
--          whose running jobs only PostgreSQL still knows about.
-- A candidate must be ready, and its lease present, not saying goodbye and not leaving
-- (an executor draining on SIGTERM).
-- then, for each candidate i (0-based): KEYS[5+3i] member hash, KEYS[6+3i] lease key,
--          KEYS[7+3i] the worker's allocated hash
-- ARGV     job id, attempt, cpus, memory_mb, candidate worker ids...
--
-- Returns {1, worker} when placed (or already placed for this attempt: running the script twice
-- is a no-op that answers the same worker), {0} when no candidate has room, and
-- {-1, worker, attempt} when an older attempt still holds an allocation, {-2} when the epoch is
-- missing (allocation state not rebuilt yet).
-- All checks come before the first write: Lua does not roll back.
local job, attempt = ARGV[1], ARGV[2]
local cpus, mem = tonumber(ARGV[3]), tonumber(ARGV[4])

local rec = redis.call('HGET', KEYS[1], job)
if rec then
  local w, _, _, a = string.match(rec, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
  if a == attempt then
    return {1, w}
  end
  return {-1, w, a}
end
if redis.call('EXISTS', KEYS[4]) == 0 then
  return {-2}
end

for i = 0, #ARGV - 5 do
  local member, lease, alloc = KEYS[5 + 3 * i], KEYS[6 + 3 * i], KEYS[7 + 3 * i]
  local m = redis.call('HMGET', member, 'state', 'cpus', 'memory_mb')
  local l = redis.call('HMGET', lease, 'incarnation', 'bye', 'leaving')
  if m[1] == 'ready' and l[1] and l[2] ~= '1' and l[3] ~= '1' then
    local a = redis.call('HMGET', alloc, 'cpus', 'memory_mb')
    local used_c, used_m = tonumber(a[1] or '0'), tonumber(a[2] or '0')
    if used_c + cpus <= tonumber(m[2]) and used_m + mem <= tonumber(m[3]) then
      local worker = ARGV[5 + i]
      redis.call('HINCRBY', alloc, 'cpus', cpus)
      redis.call('HINCRBY', alloc, 'memory_mb', mem)
      redis.call('INCRBY', KEYS[2], cpus)
      redis.call('INCRBY', KEYS[3], mem)
      redis.call('HSET', KEYS[1], job, worker .. '|' .. cpus .. '|' .. mem .. '|' .. attempt)
      return {1, worker}
    end
  end
end
return {0}
