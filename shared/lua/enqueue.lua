-- Enqueue launches on workers' arq queues, each exactly as arq's enqueue_job would, one call for a
-- whole batch (the scheduler's page): a script call per launch cost more to send and parse than
-- the enqueue itself, and so did a PUBLISH per worker and an argument per launch detail.
--
-- KEYS[1..W]  the arq queues (sorted sets) of the W workers the batch names, each once
-- then, for each launch i (0-based): KEYS[W+1+2i] its arq job key, KEYS[W+2+2i] its arq result key
-- ARGV        W, score (ms), expiry (ms), arq's job key prefix (a job key is the prefix and the
--             arq job id), the W workers' wake-up channels (in KEYS order), then the launches
--             in one string, in KEYS order: "p job\n" each, p the position (1..W) of its worker
--             and job its serialized job (compact JSON: no newline)
--
-- arq refuses a job id that already has a job or a result key; so do we, which makes a repeat a
-- no-op (the job id encodes job:attempt): a launch given twice, or the script run twice (redis-py
-- retries on timeouts), enqueues it once. Each launch is checked before it is written (Lua does
-- not roll back). A worker that received a launch gets one wake-up hint (pub/sub, at most once:
-- its poll is the safety net; a run that enqueued nothing sends none).
--
-- Returns one reply per launch, in order: 1 when enqueued, 0 when it already was.
local nworkers = tonumber(ARGV[1])
local score, expiry, prefix = ARGV[2], ARGV[3], ARGV[4]
local out = {}
local woken = {}
local k = nworkers + 1  -- KEYS index of the next launch's job key
for pos, job in string.gmatch(ARGV[5 + nworkers], '(%d+) ([^\n]*)\n') do
  local job_key, result_key = KEYS[k], KEYS[k + 1]
  k = k + 2
  if redis.call('EXISTS', job_key) == 1 or redis.call('EXISTS', result_key) == 1 then
    out[#out + 1] = 0
  else
    pos = tonumber(pos)
    redis.call('PSETEX', job_key, expiry, job)
    redis.call('ZADD', KEYS[pos], score, string.sub(job_key, #prefix + 1))
    woken[pos] = true
    out[#out + 1] = 1
  end
end
for pos = 1, nworkers do
  if woken[pos] then
    redis.call('PUBLISH', ARGV[4 + pos], 'launch')
  end
end
return out
