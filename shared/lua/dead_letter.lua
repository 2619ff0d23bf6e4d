-- Move one pending entry to the dead-letter stream, exactly once, keeping that stream bounded.
--
-- KEYS[1] the source stream, KEYS[2] the dead-letter stream
-- ARGV    group, entry id, deliveries, reason, payload (the entry's `e` field, may be empty),
--         maxlen (the dead-letter stream is trimmed to about this many entries; 0 or absent:
--         not trimmed)
--
-- Only an entry still pending in the group is moved (a concurrent reclaimer that already
-- acknowledged or dead-lettered it makes this a no-op, so running it twice moves it once).
-- Trimming is approximate (MAXLEN ~): Redis drops only whole stream nodes, so the stream may
-- exceed maxlen by less than one node (stream-node-max-entries, 100 by default); the oldest
-- dead letters go first. Returns 1 when moved, 0 otherwise.
local group, id = ARGV[1], ARGV[2]
local maxlen = tonumber(ARGV[6]) or 0
local pending = redis.call('XPENDING', KEYS[1], group, id, id, 1)
if #pending == 0 then
  return 0
end
local fields = {'stream', KEYS[1], 'group', group, 'id', id,
  'deliveries', ARGV[3], 'reason', ARGV[4], 'e', ARGV[5]}
if maxlen > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', maxlen, '*', unpack(fields))
else
  redis.call('XADD', KEYS[2], '*', unpack(fields))
end
redis.call('XACK', KEYS[1], group, id)
return 1
