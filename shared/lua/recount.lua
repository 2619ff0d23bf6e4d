-- Make every allocated counter equal the sum of the allocation records, atomically.
--
-- KEYS[1] allocations hash, KEYS[2] cluster allocated cpus, KEYS[3] cluster allocated memory_mb,
-- then the allocated hash of every worker that has records or counters
-- ARGV    the worker ids, in the same order as their keys
--
-- Writes only the counters that differ. Returns the number of counters corrected.
local per_cpu, per_mem = {}, {}
local total_cpu, total_mem = 0, 0
local flat = redis.call('HGETALL', KEYS[1])
for i = 1, #flat, 2 do
  local w, c, m = string.match(flat[i + 1], '^([^|]*)|([^|]*)|([^|]*)|')
  c, m = tonumber(c), tonumber(m)
  per_cpu[w] = (per_cpu[w] or 0) + c
  per_mem[w] = (per_mem[w] or 0) + m
  total_cpu = total_cpu + c
  total_mem = total_mem + m
end
local fixed = 0
for i, worker in ipairs(ARGV) do
  local key = KEYS[3 + i]
  local cur = redis.call('HMGET', key, 'cpus', 'memory_mb')
  local want_c, want_m = per_cpu[worker] or 0, per_mem[worker] or 0
  if tonumber(cur[1] or '0') ~= want_c then
    redis.call('HSET', key, 'cpus', want_c)
    fixed = fixed + 1
  end
  if tonumber(cur[2] or '0') ~= want_m then
    redis.call('HSET', key, 'memory_mb', want_m)
    fixed = fixed + 1
  end
end
if tonumber(redis.call('GET', KEYS[2]) or '0') ~= total_cpu then
  redis.call('SET', KEYS[2], total_cpu)
  fixed = fixed + 1
end
if tonumber(redis.call('GET', KEYS[3]) or '0') ~= total_mem then
  redis.call('SET', KEYS[3], total_mem)
  fixed = fixed + 1
end
return fixed
