-- Drain (ARGV[2] == '1') or resume (ARGV[2] == '0') a worker.
--
-- KEYS[1] member hash, KEYS[2] drained set
-- ARGV    worker id, flag
--
-- The flag is kept in the drained set so that it survives the worker's restart, like Slurm's
-- DRAIN. A live worker switches between ready and draining at once. Returns the worker's state
-- afterwards ('' when the registry has never seen it).
local wid, drain = ARGV[1], ARGV[2] == '1'
if drain then
  redis.call('SADD', KEYS[2], wid)
else
  redis.call('SREM', KEYS[2], wid)
end
local state = redis.call('HGET', KEYS[1], 'state')
if drain and state == 'ready' then
  state = 'draining'
  redis.call('HSET', KEYS[1], 'state', state)
elseif (not drain) and state == 'draining' then
  state = 'ready'
  redis.call('HSET', KEYS[1], 'state', state)
end
return state or ''
