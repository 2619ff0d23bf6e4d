-- Trim a stream towards MAXLEN without ever dropping an entry some group has not acknowledged.
--
-- KEYS[1] the stream
-- ARGV    maxlen, step (at most this many entries are removed per call, to bound the work)
--
-- For every consumer group the first entry it still needs is its oldest pending entry or, when
-- nothing is pending, the entry after its last-delivered id. Only entries older than the smallest
-- of those are candidates. Returns the number of entries removed.
local stream = KEYS[1]
local maxlen, step = tonumber(ARGV[1]), tonumber(ARGV[2])
if redis.call('EXISTS', stream) == 0 then
  return 0
end
local excess = redis.call('XLEN', stream) - maxlen
if excess <= 0 then
  return 0
end
if excess > step then
  excess = step
end

local function next_id(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return ms .. '-' .. string.format('%.0f', tonumber(seq) + 1)
end

local function older(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am < bm or (am == bm and as < bs)
end

local floor = nil
for _, g in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
  local info = {}
  for i = 1, #g, 2 do
    info[g[i]] = g[i + 1]
  end
  local need
  if tonumber(info['pending']) > 0 then
    need = redis.call('XPENDING', stream, info['name'])[2]
  else
    need = next_id(info['last-delivered-id'])
  end
  if floor == nil or older(need, floor) then
    floor = need
  end
end

local upper = '+'
if floor ~= nil then
  upper = '(' .. floor
end
local victims = redis.call('XRANGE', stream, '-', upper, 'COUNT', excess)
if #victims == 0 then
  return 0
end
return redis.call('XTRIM', stream, 'MINID', next_id(victims[#victims][1]))
