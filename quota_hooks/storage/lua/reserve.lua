-- Check every limit of every scope and hold the usage, in one atomic step.
-- KEYS: 5 per scope (lib.lua).
-- ARGV: now, use_server, month, id, requests, tokens, cost_nanos, ttl,
--       then per scope: has limits (0/1), rpm, tpm, rpd, tpd, budget ('' for unlimited).
-- Returns {1, packed expires_at and at, new month (0/1)} or
--         {0, scope index, limit, used, maximum, retry_after ('' if none)}.
local now = now_of(ARGV[1], ARGV[2])
local month, id = ARGV[3], ARGV[4]
local req, tok, nanos, ttl = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]),
                             tonumber(ARGV[8])
local scopes = #KEYS / PER_SCOPE

-- The oldest bucket of window w whose field (1 requests, 2 tokens) is not zero.
local function first_bucket_with(st, w, field)
  local oldest = st.cur[w] - WINDOWS[w].n + 1
  if not st.lo[w] then return nil end
  local fields = bucket_fields(w, math.max(st.lo[w], oldest), st.hi[w])
  get_many(st, fields)
  for i, f in ipairs(fields) do
    local c = unpack_counts(st.cache[f])
    if c[field] ~= 0 then return math.max(st.lo[w], oldest) + i - 1 end
  end
  return nil
end

local states = {}
for s = 1, scopes do
  local base = (s - 1) * PER_SCOPE
  local st = load(base, now, {})
  reap(st)
  states[s] = st
  local a = 9 + (s - 1) * 6
  if ARGV[a] == '1' then
    local minute, day = st.tot[1], st.tot[2]
    local checks = {
      { 'rpm', ARGV[a + 1], minute[1], req, 1, 1 },
      { 'tpm', ARGV[a + 2], minute[2], tok, 1, 2 },
      { 'rpd', ARGV[a + 3], day[1], req, 2, 1 },
      { 'tpd', ARGV[a + 4], day[2], tok, 2, 2 },
    }
    for _, c in ipairs(checks) do
      local name, maximum, used, wanted, w, field = c[1], c[2], c[3], c[4], c[5], c[6]
      if maximum ~= '' and wanted ~= 0 and used + wanted > tonumber(maximum) then
        local retry = ''
        if wanted <= tonumber(maximum) then
          local first = first_bucket_with(st, w, field)
          if first then
            local win = WINDOWS[w]
            retry = string.format('%.6f', math.max(0, (first + win.n) * win.bs - now))
          end
        end
        for k = 1, s do flush(states[k]) end  -- what sliding and reaping changed
        return { 0, s, name, int(used), maximum, retry }
      end
    end
    local budget = ARGV[a + 5]
    if budget ~= '' and (nanos ~= 0 or req ~= 0) then
      local spent = tonumber(redis.call('HGET', KEYS[base + 3], 'c') or '0')
      if spent + nanos > tonumber(budget) or spent >= tonumber(budget) then
        for k = 1, s do flush(states[k]) end
        return { 0, s, 'monthly_budget_usd', int(spent), budget, '' }
      end
    end
  end
end

local expires = now + ttl
local packed = struct.pack(PENDING, req, tok, nanos, now, expires)
local new_month = 0
for s = 1, scopes do
  local st = states[s]
  local base = st.base
  add(st, 1, now, { req, tok, 0, 0, 0 })
  add(st, 2, now, { req, tok, 0, 0, 0 })
  put(st, 'p:' .. id, packed)
  if touch_month(st, month) and s == 1 then new_month = 1 end
  flush(st)
  if nanos ~= 0 and redis.call('HINCRBY', KEYS[base + 3], 'c', ARGV[7]) == nanos then
    redis.call('EXPIRE', KEYS[base + 3], LONG_TTL)  -- most likely new
  end
  redis.call('ZADD', KEYS[base + 2], expires, id)
  redis.call('EXPIRE', KEYS[base + 2], STATE_TTL)
end
return { 1, struct.pack('<dd', expires, now), new_month }
