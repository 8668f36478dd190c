-- Check every limit of every scope and hold the usage, in one atomic step.
-- KEYS: workspaces set, then 12 keys per scope.
-- ARGV: now, use_server, month, id, requests, tokens, cost_nanos, ttl,
--       then per scope: workspace id ('' if none), has limits (0/1), rpm, tpm, rpd, tpd, budget
--       ('' for unlimited).
-- Returns {1, expires_at} or {0, scope index, limit, used, maximum, retry_after ('' if none)}.
local now = now_of(ARGV[1], ARGV[2])
local month, id = ARGV[3], ARGV[4]
local req, tok, nanos, ttl = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]),
                             tonumber(ARGV[8])
local scopes = (#KEYS - 1) / PER_SCOPE

local function first_bucket_with(base, w, field, now_)
  local win = WINDOWS[w]
  local _, b, ids = window_keys(base, w)
  local oldest = math.floor(now_ / win.bs) - win.n + 1
  for _, key in ipairs(redis.call('ZRANGEBYSCORE', ids, oldest, '+inf')) do
    local c = unpack_counts(redis.call('HGET', b, key))
    if c[field] ~= 0 then return tonumber(key) end
  end
  return nil
end

for s = 1, scopes do
  local base = 1 + (s - 1) * PER_SCOPE
  local a = 9 + (s - 1) * 7
  reap(base, now)
  slide(base, 1, now)
  slide(base, 2, now)
  if ARGV[a + 1] == '1' then
    local minute, day = totals(base, 1), totals(base, 2)
    local checks = {
      { 'rpm', ARGV[a + 2], minute[1], req, 1, 1 },
      { 'tpm', ARGV[a + 3], minute[2], tok, 1, 2 },
      { 'rpd', ARGV[a + 4], day[1], req, 2, 1 },
      { 'tpd', ARGV[a + 5], day[2], tok, 2, 2 },
    }
    for _, c in ipairs(checks) do
      local name, maximum, used, wanted, w, field = c[1], c[2], c[3], c[4], c[5], c[6]
      if maximum ~= '' and wanted ~= 0 and used + wanted > tonumber(maximum) then
        local retry = ''
        if wanted <= tonumber(maximum) then
          local first = first_bucket_with(base, w, field, now)
          if first then
            local win = WINDOWS[w]
            retry = string.format('%.6f', math.max(0, (first + win.n) * win.bs - now))
          end
        end
        return { 0, s, name, int(used), maximum, retry }
      end
    end
    local budget = ARGV[a + 6]
    if budget ~= '' and (nanos ~= 0 or req ~= 0) then
      local spent = tonumber(redis.call('HGET', KEYS[base + 7], month) or '0')
      if spent + nanos > tonumber(budget) or spent >= tonumber(budget) then
        return { 0, s, 'monthly_budget_usd', int(spent), budget, '' }
      end
    end
  end
end

local expires = now + ttl
local packed = int(req) .. '|' .. int(tok) .. '|' .. int(nanos) .. '|' ..
               string.format('%.6f', now) .. '|' .. month
for s = 1, scopes do
  local base = 1 + (s - 1) * PER_SCOPE
  add(base, 1, now, { req, tok, 0, 0, 0 }, now)
  add(base, 2, now, { req, tok, 0, 0, 0 }, now)
  redis.call('HINCRBY', KEYS[base + 7], month, int(nanos))
  redis.call('HSET', KEYS[base + 11], id, packed)
  redis.call('ZADD', KEYS[base + 12], expires, id)
  for k = 7, 12 do redis.call('EXPIRE', KEYS[base + k], LONG_TTL) end
  local ws = ARGV[9 + (s - 1) * 7]
  if ws ~= '' then redis.call('SADD', KEYS[1], ws) end
end
redis.call('EXPIRE', KEYS[1], LONG_TTL)
return { 1, string.format('%.6f', expires), string.format('%.6f', now) }
