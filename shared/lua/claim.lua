-- Claim launches from a worker's arq queue for this worker process, as arq's own start_jobs
-- does one job at a time with WATCH/MULTI (four round trips each), here for a batch in one step.
--
-- KEYS[1] the worker's arq queue (sorted set); KEYS[1 + i] arq's in-progress key of the i-th id
-- ARGV[1] in-progress timeout (ms), ARGV[2] now (ms), ARGV[2 + i] the i-th arq job id
--
-- An id is claimed when no one has it in progress and it is due on the queue; its in-progress
-- key is set, exactly as arq sets it. Returns {id, score, id, score, ...} of the claimed ids.
-- Safe to run twice: a second run finds the in-progress keys and claims nothing.
local out = {}
local now = tonumber(ARGV[2])
for i = 2, #KEYS do
  local id = ARGV[i + 1]
  if redis.call('EXISTS', KEYS[i]) == 0 then
    local score = redis.call('ZSCORE', KEYS[1], id)
    if score and tonumber(score) <= now then
      redis.call('PSETEX', KEYS[i], ARGV[1], '1')
      out[#out + 1] = id
      out[#out + 1] = score
    end
  end
end
return out
