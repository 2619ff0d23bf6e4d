-- Enqueue one launch on a worker's arq queue, exactly as arq's enqueue_job would, in one step.
--
-- KEYS[1] arq job key, KEYS[2] arq result key, KEYS[3] the worker's arq queue (sorted set)
-- ARGV    arq job id, serialized job, score (ms), expiry (ms)
--
-- arq refuses a job id that already has a job or a result key; so do we, which makes a repeat a
-- no-op (the job id encodes job:attempt). Returns 1 when enqueued, 0 when it already was.
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
redis.call('PSETEX', KEYS[1], ARGV[4], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
return 1
