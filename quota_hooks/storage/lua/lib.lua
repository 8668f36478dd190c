-- quota-hooks, store schema 2: helpers shared by every script (prepended to each one).
--
-- A scope is 5 keys, in this order (see redis.py):
--   1 w   one hash: both windows (totals, buckets, cursors), pending reservations, markers
--   2 x   sorted set: pending reservation ids by expiry (reaped once a minute), and '~'
--         at +inf
--   3 m   the call's month: cost, unpriced calls and charge, breakdowns (one hash)
--   4 r   recent records (list, newest first)
--   5 mr  the month of the reservation being settled or released (= m otherwise)
--
-- In w: 't1'/'t2' hold the totals of the minute (1) and day (2) windows with the lowest and
-- highest bucket id present, a bucket's field is its window's byte and its id, 'p:<id>' is
-- a pending reservation (requests, tokens, nano-dollars, at, expires), 'mx' the month whose
-- recent list has had its TTL moved, 'dx' the done-window whose hash has had its TTL set.
-- Counts are "requests, tokens, calls, errors, rate_limited". Numbers are packed with
-- struct (little-endian 64-bit): number-to-text conversions cost a microsecond each in
-- Redis' Lua, struct a tenth of that.
--
-- A call reads a scope's state with one HMGET and writes it back with one HSET (and one
-- HDEL); a bucket is read on its own only when it is not the current one.
local PER_SCOPE = 5
-- tol: buckets ahead of now that still count as the present. Buckets a whole window (n) or
-- more ahead were left in the future by a clock that stepped back, and are folded into now's
-- bucket; a late now (less than a window behind) moves nothing (windows.py).
local WINDOWS = { { bs = 1, n = 60, tol = 2 }, { bs = 60, n = 1440, tol = 1 } }
local STATE_TTL = 2 * 86400
local LONG_TTL = 400 * 86400
-- A day or week budget's scope (storage/base.py's budget_scope) keeps its totals under its
-- period ('m:2026-03-05', 'm:2026-W10'): its hash and its recent list are kept 35 days.
local PERIOD_TTL = 35 * 86400
local REAP_AT_ONCE = 1000

local function totals_ttl(month_key)
  if string.find(month_key, '%-W%d%d$') or string.find(month_key, '%d%-%d%d%-%d%d$') then
    return PERIOD_TTL
  end
  return LONG_TTL
end

local function now_of(given, use_server)
  if use_server == '1' then
    local t = redis.call('TIME')
    return tonumber(t[1]) + tonumber(t[2]) / 1000000
  end
  return tonumber(given)
end

local function int(x)
  return string.format('%.0f', x)
end

local C5 = '<i8i8i8i8i8'
local C7 = '<i8i8i8i8i8i8i8'
local C8 = '<i8i8i8i8i8i8i8i8'
local C11 = '<i8i8i8i8i8i8i8i8i8i8i8'
local PENDING = '<i8i8i8dd'

local function unpack_counts(packed)
  if not packed then return { 0, 0, 0, 0, 0 } end
  local a, b, c, d, e = struct.unpack(C5, packed)
  return { a, b, c, d, e }
end

local function pack_counts(c)
  return struct.pack(C5, c[1], c[2], c[3], c[4], c[5])
end

local function bucket_field(w, id)
  return struct.pack('<Bi8', w, id)
end

local function zero(c)
  for i = 1, #c do if c[i] ~= 0 then return false end end
  return true
end

-- A field of the state: from what this script read or wrote, else one HGET.
local function get(st, f)
  local v = st.cache[f]
  if v == nil then
    v = redis.call('HGET', st.key, f) or false
    st.cache[f] = v
  end
  return v
end

local function put(st, f, value)
  st.cache[f] = value
  st.sets[f] = value
  st.dels[f] = nil
end

local function del(st, f)
  st.cache[f] = false
  st.sets[f] = nil
  st.dels[f] = true
end

-- Read the fields of a bucket range at once (the ones not already read).
local function get_many(st, fields)
  local missing = {}
  for _, f in ipairs(fields) do
    if st.cache[f] == nil then missing[#missing + 1] = f end
  end
  if #missing > 0 then
    local values = redis.call('HMGET', st.key, unpack(missing))
    for i, f in ipairs(missing) do st.cache[f] = values[i] or false end
  end
end

local function bucket_fields(w, from, to)
  local out = {}
  for id = from, to do out[#out + 1] = bucket_field(w, id) end
  return out
end

-- Drop the buckets that left window w at now, and fold buckets a backward clock step left in
-- the future into now's bucket (totals unchanged by the fold).
local function slide(st, w)
  local win = WINDOWS[w]
  local lo, hi, cur = st.lo[w], st.hi[w], st.cur[w]
  if not lo then return end
  local total = st.tot[w]
  if hi >= cur + win.n then
    local ahead = bucket_fields(w, math.max(lo, cur + win.tol + 1), hi)
    get_many(st, ahead)
    local sum = unpack_counts(nil)
    for _, f in ipairs(ahead) do
      local c = unpack_counts(st.cache[f])
      for i = 1, 5 do sum[i] = sum[i] + c[i] end
      del(st, f)
    end
    local here = st.cur_field[w]
    local c = unpack_counts(get(st, here))
    for i = 1, 5 do c[i] = c[i] + sum[i] end
    put(st, here, pack_counts(c))
    hi = math.max(cur, math.min(hi, cur + win.tol))  -- buckets within tol stay, tracked
    if lo > cur then lo = cur end
  end
  local oldest = cur - win.n + 1
  if lo < oldest then
    if hi < oldest then  -- every bucket left the window
      for _, f in ipairs(bucket_fields(w, lo, hi)) do del(st, f) end
      st.tot[w] = unpack_counts(nil)
      st.lo[w], st.hi[w] = nil, nil
      return
    end
    local gone = bucket_fields(w, lo, oldest - 1)
    get_many(st, gone)
    for _, f in ipairs(gone) do
      if st.cache[f] then
        local c = unpack_counts(st.cache[f])
        for i = 1, 5 do total[i] = total[i] - c[i] end
        del(st, f)
      end
    end
    lo = oldest
  end
  st.lo[w], st.hi[w] = lo, hi
end

-- Add counts to window w in the bucket of time at (never a future bucket; nothing if at has
-- left the window). An undo (no count above zero) takes from its own bucket only, never from
-- another call's: nothing when a fold merged that bucket away (an over-count).
local function add(st, w, at, counts)
  local win = WINDOWS[w]
  local cur = st.cur[w]
  local bucket = math.floor(at / win.bs)
  local undo = counts[1] <= 0 and counts[2] <= 0 and counts[3] <= 0 and counts[4] <= 0
    and counts[5] <= 0
  if undo then
    if not st.lo[w] or bucket < st.lo[w] or bucket > st.hi[w] then return end
  elseif bucket > cur then
    -- never into the future: at most now's bucket, or the newest held for a late now
    bucket = math.min(bucket, math.max(cur, st.hi[w] or cur))
  end
  if bucket < cur - win.n + 1 then return end
  -- a late now's call older than the window at the newest bucket has left it too
  if st.hi[w] and bucket < st.hi[w] - win.n + 1 then return end
  local f = bucket == cur and st.cur_field[w] or bucket_field(w, bucket)
  local c = unpack_counts(get(st, f))
  local total = st.tot[w]
  for i = 1, 5 do
    -- A bucket never goes below zero: an undo takes at most what its bucket holds (a clock
    -- that stepped back may have folded the rest into another bucket, where it is counted
    -- until that bucket leaves the window: an over-count, never an under-count).
    local n = counts[i]
    if n < 0 and -n > c[i] then n = -c[i] end
    c[i] = c[i] + n
    total[i] = total[i] + n
  end
  if zero(c) then del(st, f) else put(st, f, pack_counts(c)) end
  if undo then return end
  if not st.lo[w] or bucket < st.lo[w] then st.lo[w] = bucket end
  if not st.hi[w] or bucket > st.hi[w] then st.hi[w] = bucket end
end

-- The states this script loaded, by their key (a batch of calls reads each scope once and
-- writes it back once, at the end).
local STATES, LOADED = {}, {}

local function at_now(st, now)
  st.now = now
  for w = 1, 2 do
    local cur = math.floor(now / WINDOWS[w].bs)
    st.cur[w] = cur
    st.cur_field[w] = bucket_field(w, cur)
  end
end

-- The state of the scope whose keys start at KEYS[base + 1] (read with the extra fields
-- asked for, the first time), slid to now.
local function load(base, now, extra)
  local key = KEYS[base + 1]
  local st = STATES[key]
  if st then
    st.base = base  -- this call's keys (the same scope; its own month)
    if st.now ~= now then
      at_now(st, now)
      if get(st, st.cur_field[2]) == false then st.fresh = true end
      slide(st, 1)
      slide(st, 2)
    end
    return st
  end
  st = { key = key, base = base, cache = {}, sets = {}, dels = {}, lo = {}, hi = {}, tot = {},
         cur = {}, cur_field = {}, raw = {} }
  at_now(st, now)
  STATES[key] = st
  LOADED[#LOADED + 1] = st
  local fields = { 't1', 't2', 'mx', 'dx', st.cur_field[1], st.cur_field[2] }
  for _, f in ipairs(extra) do fields[#fields + 1] = f end
  local v = redis.call('HMGET', key, unpack(fields))
  for w = 1, 2 do
    st.raw[w] = v[w]
    if v[w] then
      local r, t, c, e, l, lo, hi = struct.unpack(C7, v[w])
      st.tot[w] = { r, t, c, e, l }
      st.lo[w], st.hi[w] = lo, hi
    else
      st.tot[w] = { 0, 0, 0, 0, 0 }
    end
  end
  st.mx, st.dx = v[3], v[4]
  for i = 5, #fields do st.cache[fields[i]] = v[i] or false end
  -- The current day bucket is new: the first write of this minute (TTLs move, reaping runs).
  st.fresh = not v[6]
  slide(st, 1)
  slide(st, 2)
  return st
end

-- Write what changed back: one HSET and one HDEL at most; the hash's TTL moves once a
-- minute.
local function flush(st)
  local sets = {}
  for w = 1, 2 do
    if st.lo[w] then
      local t = st.tot[w]
      local packed = struct.pack(C7, t[1], t[2], t[3], t[4], t[5], st.lo[w], st.hi[w])
      if packed ~= st.raw[w] then
        sets[#sets + 1] = 't' .. w
        sets[#sets + 1] = packed
      end
    elseif st.raw[w] then
      st.dels['t' .. w] = true
    end
  end
  for f, value in pairs(st.sets) do
    sets[#sets + 1] = f
    sets[#sets + 1] = value
  end
  local dels = {}
  for f in pairs(st.dels) do dels[#dels + 1] = f end
  if #dels > 0 then redis.call('HDEL', st.key, unpack(dels)) end
  if #sets > 0 then
    redis.call('HSET', st.key, unpack(sets))
    if st.fresh then redis.call('EXPIRE', st.key, STATE_TTL) end
  end
end

-- Forget reservations past their ttl, once a minute, up to 10 x REAP_AT_ONCE at a time;
-- what they held stays counted (a call never recorded used its estimate). The pending set's
-- TTL moves then too (it keeps a member at +inf, so that it is not deleted and created again
-- with each reservation).
local function reap(st)
  if not st.fresh or st.reaped then return end
  st.reaped = true
  local x = KEYS[st.base + 2]
  for _ = 1, 10 do
    local expired = redis.call('ZRANGEBYSCORE', x, '-inf', st.now, 'LIMIT', 0, REAP_AT_ONCE)
    if #expired == 0 then break end
    for _, id in ipairs(expired) do del(st, 'p:' .. id) end
    redis.call('ZREM', x, unpack(expired))
    if #expired < REAP_AT_ONCE then break end
  end
  redis.call('EXPIRE', x, STATE_TTL)
end

-- Once a month per scope (and again after the state hash itself expired) the recent list's
-- TTL moves: returns true the first time for this month. (A month's hash gets its TTL when
-- it is created.)
local function touch_month(st, month)
  if st.mx == month then return false end
  redis.call('EXPIRE', KEYS[st.base + 4], totals_ttl(KEYS[st.base + 3]))
  put(st, 'mx', month)
  st.mx = month
  return true
end

-- A month's hash as this batch sees it: the fields it read, what it will write, and what it
-- adds to the cost ('c'), unpriced calls ('uc') and unpriced charge ('un').
local MONTHS, MONTH_LIST = {}, {}
-- What the batch adds to pending expiries (ZADD), takes from them (ZREM), and pushes to
-- recent lists (LISTS: each list's cap and TTL), by key.
local ZADDS, ZREMS, PUSHES, LISTS = {}, {}, {}, {}

local function month_state(key)
  local m = MONTHS[key]
  if not m then
    m = { key = key, cache = {}, sets = {}, add = { c = 0, uc = 0, un = 0 }, ttl = false }
    MONTHS[key] = m
    MONTH_LIST[#MONTH_LIST + 1] = m
  end
  return m
end

local function month_fields(m, fields)
  local missing = {}
  for _, f in ipairs(fields) do
    if m.cache[f] == nil then missing[#missing + 1] = f end
  end
  if #missing > 0 then
    local v = redis.call('HMGET', m.key, unpack(missing))
    for i, f in ipairs(missing) do m.cache[f] = v[i] or false end
  end
end

-- The month's cost in nano-dollars, with what this batch added.
local function month_cost(m)
  month_fields(m, { 'c' })
  if not m.cache.c then m.ttl = true end  -- a new hash
  return (tonumber(m.cache.c) or 0) + m.add.c
end

local function mput(m, f, value)
  m.cache[f] = value
  m.sets[f] = value
end

local function later(map, key, ...)
  local list = map[key]
  if not list then
    list = {}
    map[key] = list
  end
  for _, v in ipairs({ ... }) do list[#list + 1] = v end
end

-- Undo a pending reservation on one scope (loaded with its 'p:<id>' field); false if it is
-- not pending there (settled, released, or past its ttl: what it held stays counted). With
-- a part (requests, tokens, nano-dollars), undo only that much of it: the share of a lease
-- that one call took (the rest stays held until its other calls settle or the lease is given
-- back).
local function undo(st, id, part)
  local f = 'p:' .. id
  local packed = st.cache[f]
  if packed == nil then packed = get(st, f) end
  if not packed then return false end
  local r, t, n, at, expires = struct.unpack(PENDING, packed)
  if expires <= st.now then
    del(st, f)
    later(ZREMS, KEYS[st.base + 2], id)
    return false
  end
  local ur, ut, un = r, t, n
  if part then
    ur, ut, un = math.min(part[1], r), math.min(part[2], t), math.min(part[3], n)
  end
  if ur == r and ut == t and un == n then
    del(st, f)
    later(ZREMS, KEYS[st.base + 2], id)
  else
    put(st, f, struct.pack(PENDING, r - ur, t - ut, n - un, at, expires))
  end
  add(st, 1, at, { -ur, -ut, 0, 0, 0 })
  add(st, 2, at, { -ur, -ut, 0, 0, 0 })
  if un ~= 0 then
    local m = month_state(KEYS[st.base + 5])
    m.add.c = m.add.c - un
  end
  return true
end

-- Write what the batch deferred: each month's hash (one HINCRBY per counter, one HSET),
-- pending expiries (one ZREM and one ZADD a key), recent lists (one LPUSH a list).
local function flush_deferred()
  for _, m in ipairs(MONTH_LIST) do
    for _, name in ipairs({ 'c', 'uc', 'un' }) do
      if m.add[name] ~= 0 then redis.call('HINCRBY', m.key, name, int(m.add[name])) end
    end
    local sets = {}
    for f, value in pairs(m.sets) do
      sets[#sets + 1] = f
      sets[#sets + 1] = value
    end
    if #sets > 0 then redis.call('HSET', m.key, unpack(sets)) end
    if m.ttl then redis.call('EXPIRE', m.key, totals_ttl(m.key)) end
  end
  for key, ids in pairs(ZREMS) do redis.call('ZREM', key, unpack(ids)) end
  for key, members in pairs(ZADDS) do
    members[#members + 1] = '+inf'
    members[#members + 1] = '~'
    if redis.call('ZADD', key, unpack(members)) == #members / 2 then  -- a new set
      redis.call('EXPIRE', key, STATE_TTL)
    end
  end
  for key, records in pairs(PUSHES) do
    local length = redis.call('LPUSH', key, unpack(records))
    local cap, ttl = LISTS[key][1], LISTS[key][2]
    if length == #records then
      redis.call('EXPIRE', key, ttl)
    elseif length > cap + 50 then
      redis.call('LTRIM', key, 0, cap - 1)
    end
  end
end

-- Run a batch of calls of one kind. ARGV[1] is use_server; then each call is its number of
-- keys, its number of arguments, and those arguments (its now first). fn(k, a, now) runs
-- one call whose keys follow KEYS[k] and whose arguments follow ARGV[a] (its now). Every
-- state is written back at the end; the results are the calls', in order.
local function each_call(fn)
  local server_now = nil
  if ARGV[1] == '1' then server_now = now_of('', '1') end
  local results, k, a = {}, 0, 2
  while a <= #ARGV do
    local nkeys, nargs = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
    results[#results + 1] = fn(k, a + 2, server_now or tonumber(ARGV[a + 2]))
    k, a = k + nkeys, a + 2 + nargs
  end
  for _, st in ipairs(LOADED) do flush(st) end
  flush_deferred()
  return results
end
