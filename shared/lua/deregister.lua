-- A worker says goodbye: mark its lease so the registry announces `worker-left` (shutdown).
--
-- KEYS[1] the lease hash
-- ARGV    incarnation, ttl_ms
--
-- The lease is kept (with `bye`) until the registry has seen it; only the incarnation that owns
-- the lease can mark it. Returns 1 when marked, 0 otherwise.
local cur = redis.call('HGET', KEYS[1], 'incarnation')
if cur ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'bye', '1')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
