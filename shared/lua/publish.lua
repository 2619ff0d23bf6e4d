-- Append a batch of events to their streams, one XADD each, in one call (the scheduler's page of
-- job-allocated events): an XADD per event, even pipelined, cost more to send and parse than to
-- run, and so did an argument per event.
--
-- KEYS     the streams the batch names, each once
-- ARGV[1]  the entries' field name
-- ARGV[2]  the events in one string, in order: "p event\n" each, p the position (1..#KEYS) of
--          its stream and event the encoded event (compact JSON: no newline)
--
-- The entries are added in order with ids Redis chooses ('*'), exactly as one XADD each in a
-- MULTI would add them: nothing is trimmed here (StreamBus trims with stream_trim.lua, never
-- past an entry a group still needs). Running the script twice (redis-py retries on timeouts)
-- adds the events twice, as a retried XADD would: each event carries its own id, and consumers
-- apply an id once.
--
-- Returns {ids, lengths}: the entry ids in order, and each stream's length after the batch (in
-- KEYS order), so that the caller trims only a stream that has grown past its bound.
local field = ARGV[1]
local ids = {}
for pos, event in string.gmatch(ARGV[2], '(%d+) ([^\n]*)\n') do
  ids[#ids + 1] = redis.call('XADD', KEYS[tonumber(pos)], '*', field, event)
end
local lengths = {}
for i = 1, #KEYS do
  lengths[i] = redis.call('XLEN', KEYS[i])
end
return {ids, lengths}
