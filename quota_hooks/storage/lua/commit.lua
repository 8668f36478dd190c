-- Add one record to every scope, settling its reservation (if still pending) exactly once.
-- KEYS: 5 per scope (lib.lua), then the done-hash of this commit's window and of the one
--       before (its id: a commit that ran once, even if its caller timed out, is never
--       counted twice when it is replayed).
-- ARGV: now, use_server, month, reservation id ('' for none), requests, tokens, calls,
--       errors, rate_limited, cost_nanos, model, api_method, failed (0/1), total, input,
--       output, unpriced (0/1), record, recent cap, day, unpriced nanos, age (seconds between
--       the call and now), breakdown names cap, commit id, replay (0/1), done window.
-- Returns 0 (already counted) or 1, or 2 when the first scope is new this month.
local now = now_of(ARGV[1], ARGV[2])
local month, rid = ARGV[3], ARGV[4]
local counts = { tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]),
                 tonumber(ARGV[9]) }
local nanos = tonumber(ARGV[10])
local model, method = ARGV[11], ARGV[12]
local unpriced = ARGV[17] ~= '0'
local unpriced_nanos = tonumber(ARGV[21])
-- Breakdown fields: requests, errors, tokens, input, output, priced cost, unpriced calls,
-- unpriced charge.
local bd = { 1, tonumber(ARGV[13]), tonumber(ARGV[14]), tonumber(ARGV[15]),
             tonumber(ARGV[16]), nanos - unpriced_nanos, unpriced and 1 or 0, unpriced_nanos }
local record, cap, day = ARGV[18], tonumber(ARGV[19]), ARGV[20]
local names_cap = tonumber(ARGV[23])
local commit_id, replay, window = ARGV[24], ARGV[25], ARGV[26]
local scopes = (#KEYS - 2) / PER_SCOPE
local done, done_before = KEYS[#KEYS - 1], KEYS[#KEYS]
if replay == '1' and redis.call('HEXISTS', done_before, commit_id) == 1 then return 0 end
if redis.call('HSETNX', done, commit_id, '1') == 0 then return 0 end
local at = now - tonumber(ARGV[22])
local extra = {}
if rid ~= '' then extra[1] = 'p:' .. rid end

local function add_to(value)
  if not value then
    return struct.pack(C8, bd[1], bd[2], bd[3], bd[4], bd[5], bd[6], bd[7], bd[8])
  end
  local a, b, c, d, e, f, g, h = struct.unpack(C8, value)
  return struct.pack(C8, a + bd[1], b + bd[2], c + bd[3], d + bd[4], e + bd[5], f + bd[6],
                     g + bd[7], h + bd[8])
end

local result = 1
for s = 1, scopes do
  local base = (s - 1) * PER_SCOPE
  local st = load(base, now, extra)
  reap(st)
  if rid ~= '' then undo(st, rid) end
  add(st, 1, at, counts)
  add(st, 2, at, { counts[1], counts[2], 0, 0, 0 })
  if s == 1 and st.dx ~= window then
    redis.call('EXPIRE', done, 300)
    put(st, 'dx', window)
  end
  if touch_month(st, month) and s == 1 then result = 2 end
  flush(st)
  -- The month: its cost (as text, for HINCRBY) and the breakdowns (packed), read with one
  -- HMGET and written with one HSET.
  local mkey = KEYS[base + 3]
  redis.call('HINCRBY', mkey, 'c', ARGV[10])
  if unpriced then
    redis.call('HINCRBY', mkey, 'uc', 1)
    if unpriced_nanos ~= 0 then redis.call('HINCRBY', mkey, 'un', ARGV[21]) end
  end
  local fm, fa, fd = 'm:' .. model, 'a:' .. method, 'd:' .. day
  local v = redis.call('HMGET', mkey, fm, fa, fd, '#m', '#a')
  -- The scope's first call of the day (and so of the month's hash): its TTL is set.
  if not v[3] then redis.call('EXPIRE', mkey, LONG_TTL) end
  local sets = {}
  -- A name beyond the cap of a month's breakdown counts under '(other)'.
  local named = { { fm, v[1], '#m', v[4], 'm:(other)' }, { fa, v[2], '#a', v[5], 'a:(other)' } }
  for _, n in ipairs(named) do
    local field, value, count_field, count = n[1], n[2], n[3], tonumber(n[4]) or 0
    if not value then
      if count >= names_cap then
        field = n[5]
        value = redis.call('HGET', mkey, field)
      else
        sets[#sets + 1] = count_field
        sets[#sets + 1] = int(count + 1)
      end
    end
    sets[#sets + 1] = field
    sets[#sets + 1] = add_to(value)
  end
  sets[#sets + 1] = fd
  sets[#sets + 1] = add_to(v[3])
  redis.call('HSET', mkey, unpack(sets))
  local length = redis.call('LPUSH', KEYS[base + 4], record)
  if length == 1 then
    redis.call('EXPIRE', KEYS[base + 4], LONG_TTL)
  elseif length > cap + 50 then
    redis.call('LTRIM', KEYS[base + 4], 0, cap - 1)
  end
end
return result
