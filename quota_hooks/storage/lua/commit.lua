-- Add one record to every scope, settling its reservation (if still pending) exactly once.
-- KEYS: workspaces set, then 13 keys per scope, then this commit's done-key (its id: a
--       commit that ran once, even if its caller timed out, is never counted twice).
-- ARGV: now, use_server, month, reservation id ('' for none), requests, tokens, calls, errors,
--       rate_limited, cost_nanos, model, api_method, failed (0/1), total, input, output,
--       unpriced (0/1), record json, recent cap, day, unpriced nanos, age (seconds between
--       the call and now), breakdown names cap, then one workspace id ('' if none) per
--       scope.
local now = now_of(ARGV[1], ARGV[2])
local month, rid = ARGV[3], ARGV[4]
local counts = { tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]),
                 tonumber(ARGV[9]) }
local nanos = tonumber(ARGV[10])
local model, method = ARGV[11], ARGV[12]
local unpriced_nanos = tonumber(ARGV[21])
-- Breakdown fields: requests, errors, tokens, input, output, priced cost, unpriced calls,
-- unpriced charge.
local bd = { '1', ARGV[13], ARGV[14], ARGV[15], ARGV[16], int(nanos - unpriced_nanos),
             ARGV[17], ARGV[21] }
local record, cap, day = ARGV[18], tonumber(ARGV[19]), ARGV[20]
local scopes = (#KEYS - 2) / PER_SCOPE
if not redis.call('SET', KEYS[#KEYS], '1', 'NX', 'EX', 86400) then return 0 end
local at = now - tonumber(ARGV[22])
-- A name beyond the cap of a month's breakdown counts under '(other)' (each name holds up to
-- 8 fields; 5 on most calls).
local names_cap = tonumber(ARGV[23]) * 5
local function kept(key, name)
  if redis.call('HEXISTS', key, '0:' .. name) == 1 then return name end
  if redis.call('HLEN', key) >= names_cap then return '(other)' end
  return name
end
for s = 1, scopes do
  local base = 1 + (s - 1) * PER_SCOPE
  reap(base, now)
  if rid ~= '' then undo(base, rid, now) end
  add(base, 1, at, counts, now)
  add(base, 2, at, { counts[1], counts[2], 0, 0, 0 }, now)
  redis.call('HINCRBY', KEYS[base + 7], month, int(nanos))
  if ARGV[17] ~= '0' then
    redis.call('HINCRBY', KEYS[base + 7], month .. ':uc', 1)
    if unpriced_nanos ~= 0 then
      redis.call('HINCRBY', KEYS[base + 7], month .. ':un', ARGV[21])
    end
  end
  local m_name, a_name = kept(KEYS[base + 8], model), kept(KEYS[base + 9], method)
  for i = 1, 8 do
    if bd[i] ~= '0' then
      redis.call('HINCRBY', KEYS[base + 8], (i - 1) .. ':' .. m_name, bd[i])
      redis.call('HINCRBY', KEYS[base + 9], (i - 1) .. ':' .. a_name, bd[i])
      redis.call('HINCRBY', KEYS[base + 13], (i - 1) .. ':' .. day, bd[i])
    end
  end
  redis.call('LPUSH', KEYS[base + 10], record)
  redis.call('LTRIM', KEYS[base + 10], 0, cap - 1)
  for k = 7, 10 do redis.call('EXPIRE', KEYS[base + k], LONG_TTL) end
  redis.call('EXPIRE', KEYS[base + 13], LONG_TTL)
  local ws = ARGV[23 + s]
  if ws ~= '' then redis.call('SADD', KEYS[1], ws) end
end
redis.call('EXPIRE', KEYS[1], LONG_TTL)
return 1
