-- Forget a worker id that has no lease and is not live (keeps the known set small).
--
-- KEYS[1] lease, KEYS[2] member hash, KEYS[3] known set
-- ARGV    worker id
-- A lease marked `bye` of a never-announced incarnation is removed too.
local l = redis.call('HMGET', KEYS[1], 'incarnation', 'bye')
local state = redis.call('HGET', KEYS[2], 'state')
if state == 'ready' or state == 'draining' then
  return 0
end
if l[1] and l[2] ~= '1' then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[3], ARGV[1])
return 1
