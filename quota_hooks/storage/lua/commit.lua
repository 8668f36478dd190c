-- Commit, for each call of a batch: add one record to every scope, settling its reservation
-- (if still pending) exactly once.
-- A call's keys: 5 per scope (lib.lua), then the done-hash of its window and of the one
-- before (its id: a commit that ran once, even if its caller timed out, is never counted
-- twice when it is replayed).
-- Its arguments: now, month, reservation id ('' for none), the numbers (packed '<17qd':
-- requests, tokens, calls, errors, rate_limited, cost_nanos, failed (0/1), total, input,
-- output, unpriced (0/1), unpriced nanos, recent cap, breakdown names cap, cached input,
-- cache-write and reasoning tokens, age in seconds between the call and now), model,
-- api_method, record, day, commit id, replay (0/1), done window.
-- Its result: 0 (already counted) or 1, or 2 when the first scope is new this month.

local function commit(k, a, now)
  local month, rid = ARGV[a + 1], ARGV[a + 2]
  local requests, tokens, calls, errors, limited, nanos, failed, total, input, output,
        unpriced, unpriced_nanos, cap, names_cap, cached, cache_write, reasoning, age =
    struct.unpack('<i8i8i8i8i8i8i8i8i8i8i8i8i8i8i8i8i8d', ARGV[a + 3])
  local model, method, record, day = ARGV[a + 4], ARGV[a + 5], ARGV[a + 6], ARGV[a + 7]
  local commit_id, replay, window = ARGV[a + 8], ARGV[a + 9], ARGV[a + 10]
  local part = nil
  if ARGV[a + 11] ~= '' then part = { struct.unpack('<i8i8i8', ARGV[a + 11]) } end
  local nkeys = tonumber(ARGV[a - 2])
  local scopes = (nkeys - 2) / PER_SCOPE
  local done, done_before = KEYS[k + nkeys - 1], KEYS[k + nkeys]
  if replay == '1' and redis.call('HEXISTS', done_before, commit_id) == 1 then return 0 end
  if redis.call('HSETNX', done, commit_id, '1') == 0 then return 0 end
  local counts = { requests, tokens, calls, errors, limited }
  -- Breakdown fields: requests, errors, tokens, input, output, priced cost, unpriced calls,
  -- unpriced charge, cached input, cache-write and reasoning tokens (a row of the first 8
  -- only was written by an older version: the others read as 0).
  local bd = { 1, failed, total, input, output, nanos - unpriced_nanos, unpriced,
               unpriced_nanos, cached, cache_write, reasoning }
  local function add_to(value)
    if not value then
      return struct.pack(C11, bd[1], bd[2], bd[3], bd[4], bd[5], bd[6], bd[7], bd[8], bd[9],
                         bd[10], bd[11])
    end
    local x1, x2, x3, x4, x5, x6, x7, x8 = struct.unpack(C8, value)
    local x9, x10, x11 = 0, 0, 0
    if #value > 64 then x9, x10, x11 = struct.unpack('<i8i8i8', value, 65) end
    return struct.pack(C11, x1 + bd[1], x2 + bd[2], x3 + bd[3], x4 + bd[4], x5 + bd[5],
                       x6 + bd[6], x7 + bd[7], x8 + bd[8], x9 + bd[9], x10 + bd[10],
                       x11 + bd[11])
  end
  local at = now - age
  local extra = {}
  if rid ~= '' then extra[1] = 'p:' .. rid end
  local result = 1
  for s = 1, scopes do
    local base = k + (s - 1) * PER_SCOPE
    local st = load(base, now, extra)
    reap(st)
    if rid ~= '' then undo(st, rid, part) end
    add(st, 1, at, counts)
    add(st, 2, at, { requests, tokens, 0, 0, 0 })
    if s == 1 and st.dx ~= window then
      redis.call('EXPIRE', done, 300)
      put(st, 'dx', window)
      st.dx = window
    end
    if touch_month(st, month) and s == 1 then result = 2 end
    -- The month: its cost and the breakdowns (packed), written once for the batch.
    local m = month_state(KEYS[base + 3])
    m.add.c = m.add.c + nanos
    if unpriced ~= 0 then
      m.add.uc = m.add.uc + 1
      m.add.un = m.add.un + unpriced_nanos
    end
    if totals_ttl(KEYS[base + 3]) == PERIOD_TTL then
      -- A day or week budget's scope: its cost is all it keeps (no breakdowns, no records).
      month_fields(m, { 'c' })
      if not m.cache.c then m.ttl = true end
    else
      local fm, fa, fd = 'm:' .. model, 'a:' .. method, 'd:' .. day
      month_fields(m, { fm, fa, fd, '#m', '#a' })
      -- The scope's first call of the day (and so of a new hash): its TTL is set.
      if not m.cache[fd] then m.ttl = true end
      -- A name beyond the cap of a month's breakdown counts under '(other)'.
      for _, n in ipairs({ { fm, '#m', 'm:(other)' }, { fa, '#a', 'a:(other)' } }) do
        local field, count_field = n[1], n[2]
        if not m.cache[field] then
          local count = tonumber(m.cache[count_field]) or 0
          if count >= names_cap then
            field = n[3]
            month_fields(m, { field })
          else
            mput(m, count_field, int(count + 1))
          end
        end
        mput(m, field, add_to(m.cache[field]))
      end
      mput(m, fd, add_to(m.cache[fd]))
      later(PUSHES, KEYS[base + 4], record)
      LISTS[KEYS[base + 4]] = { cap, LONG_TTL }
    end
  end
  return result
end

return each_call(commit)
