-- Reserve, for each call of a batch: check every limit of every scope of the call and hold
-- its usage, in one atomic step (the calls one after the other).
-- A call's keys: 5 per scope (lib.lua). Its arguments: now, month, id, requests, tokens,
-- cost_nanos, ttl, then what a lease asks for (requests, tokens, nano-dollars; 0 0 0: no
-- lease) and the share of the room a lease may take (1/share), then per scope: has limits
-- (0/1), rpm, tpm, rpd, tpd, budget ('' for unlimited).
-- A call's result: {1, packed expires_at and at, new month (0/1), packed hold} or
--                  {0, scope index, limit, used, maximum, retry_after ('' if none)}.
-- A lease holds what it asks for, or less where a limit has less room (1/share of it), but
-- never less than the call itself needs: near a limit, a lease is one call.

-- The oldest bucket of window w whose field (1 requests, 2 tokens) is not zero.
local function first_bucket_with(st, w, field)
  local oldest = st.cur[w] - WINDOWS[w].n + 1
  if not st.lo[w] then return nil end
  local from = math.max(st.lo[w], oldest)
  local fields = bucket_fields(w, from, st.hi[w])
  get_many(st, fields)
  for i, f in ipairs(fields) do
    local c = unpack_counts(st.cache[f])
    if c[field] ~= 0 then return from + i - 1 end
  end
  return nil
end

local function reserve(k, a, now)
  local month, id = ARGV[a + 1], ARGV[a + 2]
  local req, tok, nanos, ttl = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4]),
                               tonumber(ARGV[a + 5]), tonumber(ARGV[a + 6])
  local want = { tonumber(ARGV[a + 7]), tonumber(ARGV[a + 8]), tonumber(ARGV[a + 9]) }
  local share = tonumber(ARGV[a + 10])
  local leasing = want[1] > req or want[2] > tok or want[3] > nanos
  local hold = { math.max(req, want[1]), math.max(tok, want[2]), math.max(nanos, want[3]) }
  local function room(i, maximum, used, needed)
    if leasing and maximum ~= '' then
      local spare = math.floor((tonumber(maximum) - used) / share)
      hold[i] = math.max(needed, math.min(hold[i], spare))
    end
  end
  local scopes = tonumber(ARGV[a - 2]) / PER_SCOPE
  local states = {}
  for s = 1, scopes do
    local base = k + (s - 1) * PER_SCOPE
    local st = load(base, now, {})
    reap(st)
    states[s] = st
    local l = a + 11 + (s - 1) * 6
    if ARGV[l] == '1' then
      local minute, day = st.tot[1], st.tot[2]
      local checks = {
        { 'rpm', ARGV[l + 1], minute[1], req, 1, 1 },
        { 'tpm', ARGV[l + 2], minute[2], tok, 1, 2 },
        { 'rpd', ARGV[l + 3], day[1], req, 2, 1 },
        { 'tpd', ARGV[l + 4], day[2], tok, 2, 2 },
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
          return { 0, s, name, int(used), maximum, retry }
        end
      end
      local budget = ARGV[l + 5]
      local spent = 0
      if budget ~= '' and (nanos ~= 0 or req ~= 0) then
        spent = month_cost(month_state(KEYS[base + 3]))
        if spent + nanos > tonumber(budget) or spent >= tonumber(budget) then
          return { 0, s, 'monthly_budget_usd', int(spent), budget, '' }
        end
      end
      if leasing then
        room(1, ARGV[l + 1], minute[1], req)
        room(1, ARGV[l + 3], day[1], req)
        room(2, ARGV[l + 2], minute[2], tok)
        room(2, ARGV[l + 4], day[2], tok)
        if budget ~= '' then
          room(3, budget, month_cost(month_state(KEYS[base + 3])), nanos)
        end
      end
    end
  end
  req, tok, nanos = hold[1], hold[2], hold[3]

  local expires = now + ttl
  local packed = struct.pack(PENDING, req, tok, nanos, now, expires)
  local new_month = 0
  for s = 1, scopes do
    local st = states[s]
    local base = k + (s - 1) * PER_SCOPE
    st.base = base
    add(st, 1, now, { req, tok, 0, 0, 0 })
    add(st, 2, now, { req, tok, 0, 0, 0 })
    put(st, 'p:' .. id, packed)
    if touch_month(st, month) and s == 1 then new_month = 1 end
    if nanos ~= 0 then
      local m = month_state(KEYS[base + 3])
      month_cost(m)
      m.add.c = m.add.c + nanos
    end
    later(ZADDS, KEYS[base + 2], expires, id)
  end
  return { 1, struct.pack('<dd', expires, now), new_month, struct.pack('<i8i8i8', req, tok, nanos) }
end

return each_call(reserve)
