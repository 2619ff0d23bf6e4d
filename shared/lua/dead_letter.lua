-- Move one pending entry to the dead-letter stream, exactly once.
--
-- KEYS[1] the source stream, KEYS[2] the dead-letter stream
-- ARGV    group, entry id, deliveries, reason, payload (the entry's `e` field, may be empty)
--
-- Only an entry still pending in the group is moved (a concurrent reclaimer that already
-- acknowledged or dead-lettered it makes this a no-op). Returns 1 when moved, 0 otherwise.
local group, id = ARGV[1], ARGV[2]
local pending = redis.call('XPENDING', KEYS[1], group, id, id, 1)
if #pending == 0 then
  return 0
end
redis.call('XADD', KEYS[2], '*',
  'stream', KEYS[1], 'group', group, 'id', id,
  'deliveries', ARGV[3], 'reason', ARGV[4], 'e', ARGV[5])
redis.call('XACK', KEYS[1], group, id)
return 1
