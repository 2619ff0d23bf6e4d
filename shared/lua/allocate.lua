-- Place jobs, each on the first of its candidate workers with room, atomically. One call takes
-- a whole batch (the scheduler's page): a script call per job cost more to send and parse than
-- the allocation itself. Jobs are taken in order, each as if it were a call of its own.
--
-- KEYS[1]  allocations hash (job id -> "worker|cpus|memory_mb|attempt")
-- KEYS[2]  cluster allocated cpus      KEYS[3]  cluster allocated memory_mb
-- KEYS[4]  the allocation epoch: present once the reconciler has (re)built the records from
--          PostgreSQL. After a Redis restart without persistence it is missing, and nothing is
--          placed until it is back: the empty counters would otherwise over-commit workers
--          whose running jobs only PostgreSQL still knows about.
-- A candidate must be ready, and its lease present, not saying goodbye and not leaving
-- (an executor draining on SIGTERM).
-- then, for each worker i (0-based) the batch names: KEYS[5+3i] member hash, KEYS[6+3i] lease
--          key, KEYS[7+3i] the worker's allocated hash
-- ARGV     the number of workers W, their ids (in KEYS order), then the jobs in one string:
--          "job attempt cpus memory_mb p1 p2 ...;" each, p its candidates' positions (1..W) in
--          the worker list (one argument: six or more per job cost more to send than to run)
--
-- Returns one reply per job: {1, worker} when placed (or already placed for this attempt:
-- running the script twice is a no-op that answers the same workers), {0} when no candidate
-- has room, {-1, worker, attempt} when an older attempt still holds an allocation, {-2} when
-- the epoch is missing (allocation state not rebuilt yet).
-- Each job's checks come before its first write (Lua does not roll back), and each job's writes
-- leave the counters equal to the sums of the records.
local nworkers = tonumber(ARGV[1])
local workers = {}  -- position -> {ready, cpus, memory_mb, used cpus, used memory_mb}, on demand
local open = nil  -- the epoch, read once

local function worker(pos)
  local w = workers[pos]
  if w then
    return w
  end
  local i = pos - 1
  local m = redis.call('HMGET', KEYS[5 + 3 * i], 'state', 'cpus', 'memory_mb')
  local l = redis.call('HMGET', KEYS[6 + 3 * i], 'incarnation', 'bye', 'leaving')
  local a = redis.call('HMGET', KEYS[7 + 3 * i], 'cpus', 'memory_mb')
  w = {ready = m[1] == 'ready' and l[1] and l[2] ~= '1' and l[3] ~= '1',
       cpus = tonumber(m[2]), mem = tonumber(m[3]),
       used_c = tonumber(a[1] or '0'), used_m = tonumber(a[2] or '0')}
  workers[pos] = w
  return w
end

local function place(job, attempt, cpus, mem, candidates)
  local rec = redis.call('HGET', KEYS[1], job)
  if rec then
    local w, _, _, a = string.match(rec, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
    if a == attempt then
      return {1, w}
    end
    return {-1, w, a}
  end
  if open == nil then
    open = redis.call('EXISTS', KEYS[4]) == 1
  end
  if not open then
    return {-2}
  end
  for k = 5, #candidates do
    local pos = tonumber(candidates[k])
    local w = worker(pos)
    if w.ready and w.used_c + cpus <= w.cpus and w.used_m + mem <= w.mem then
      local id, alloc = ARGV[1 + pos], KEYS[7 + 3 * (pos - 1)]
      redis.call('HINCRBY', alloc, 'cpus', cpus)
      redis.call('HINCRBY', alloc, 'memory_mb', mem)
      redis.call('INCRBY', KEYS[2], cpus)
      redis.call('INCRBY', KEYS[3], mem)
      redis.call('HSET', KEYS[1], job, id .. '|' .. cpus .. '|' .. mem .. '|' .. attempt)
      w.used_c, w.used_m = w.used_c + cpus, w.used_m + mem
      return {1, id}
    end
  end
  return {0}
end

local out = {}
for job in string.gmatch(ARGV[nworkers + 2], '[^;]+') do
  local f = {}  -- job, attempt, cpus, memory_mb, then the candidates' positions
  for v in string.gmatch(job, '%S+') do
    f[#f + 1] = v
  end
  out[#out + 1] = place(f[1], f[2], tonumber(f[3]), tonumber(f[4]), f)
end
return out
