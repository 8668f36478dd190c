-- quota-hooks: helpers shared by every script (prepended to each one when it is loaded).
-- A scope is 13 keys, in this order (see redis.py):
--   1 tot_m  2 b_m  3 ids_m    minute window: running totals, buckets, bucket ids
--   4 tot_d  5 b_d  6 ids_d    day window
--   7 months  8 bd_model  9 bd_method  10 recent  11 pend  12 pexp  13 bd_day
-- Buckets hold "requests,tokens,calls,errors,rate_limited".
local PER_SCOPE = 13
-- tol: buckets ahead of now that still count as the present; newer ones were left in the
-- future by a clock that stepped back, and are folded into now's bucket (windows.py).
local WINDOWS = { { bs = 1, n = 60, ttl = 180, tol = 2 }, { bs = 60, n = 1440, ttl = 90000, tol = 1 } }
local FIELDS = { 'r', 't', 'c', 'e', 'l' }
local LONG_TTL = 400 * 86400

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

local function unpack_counts(packed)
  local out = { 0, 0, 0, 0, 0 }
  if packed then
    local i = 1
    for v in string.gmatch(packed, '[^,]+') do
      out[i] = tonumber(v)
      i = i + 1
    end
  end
  return out
end

local function window_keys(base, w)
  local o = base + (w - 1) * 3
  return KEYS[o + 1], KEYS[o + 2], KEYS[o + 3]
end

-- Drop the buckets that left window w at now; returns the oldest bucket still inside.
local function slide(base, w, now)
  local win = WINDOWS[w]
  local tot, b, ids = window_keys(base, w)
  local oldest = math.floor(now / win.bs) - win.n + 1
  local gone = redis.call('ZRANGEBYSCORE', ids, '-inf', '(' .. int(oldest))
  for _, id in ipairs(gone) do
    local counts = unpack_counts(redis.call('HGET', b, id))
    for i = 1, 5 do
      if counts[i] ~= 0 then redis.call('HINCRBY', tot, FIELDS[i], int(-counts[i])) end
    end
    redis.call('HDEL', b, id)
  end
  if #gone > 0 then redis.call('ZREMRANGEBYSCORE', ids, '-inf', '(' .. int(oldest)) end
  local current = math.floor(now / win.bs)
  local edge = '(' .. int(current + win.tol)
  local ahead = redis.call('ZRANGEBYSCORE', ids, edge, '+inf')
  if #ahead > 0 then  -- the clock stepped back: fold the future into now (totals unchanged)
    local sum = { 0, 0, 0, 0, 0 }
    for _, id in ipairs(ahead) do
      local counts = unpack_counts(redis.call('HGET', b, id))
      for i = 1, 5 do sum[i] = sum[i] + counts[i] end
      redis.call('HDEL', b, id)
    end
    redis.call('ZREMRANGEBYSCORE', ids, edge, '+inf')
    local key = int(current)
    local cur = unpack_counts(redis.call('HGET', b, key))
    for i = 1, 5 do cur[i] = int(cur[i] + sum[i]) end
    redis.call('HSET', b, key, table.concat(cur, ','))
    redis.call('ZADD', ids, current, key)
  end
  return oldest
end

local function add(base, w, at, counts, now)
  local win = WINDOWS[w]
  local tot, b, ids = window_keys(base, w)
  local oldest = slide(base, w, now)
  local bucket = math.floor(at / win.bs)
  local current = math.floor(now / win.bs)
  if bucket > current then bucket = current end  -- never into the future
  if bucket < oldest then return end
  local key = int(bucket)
  local cur = unpack_counts(redis.call('HGET', b, key))
  for i = 1, 5 do
    if counts[i] ~= 0 then
      cur[i] = cur[i] + counts[i]
      redis.call('HINCRBY', tot, FIELDS[i], int(counts[i]))
    end
  end
  for i = 1, 5 do cur[i] = int(cur[i]) end
  redis.call('HSET', b, key, table.concat(cur, ','))
  redis.call('ZADD', ids, bucket, key)
  redis.call('EXPIRE', tot, win.ttl)
  redis.call('EXPIRE', b, win.ttl)
  redis.call('EXPIRE', ids, win.ttl)
end

local function totals(base, w)
  local tot = window_keys(base, w)
  local v = redis.call('HMGET', tot, 'r', 't', 'c', 'e', 'l')
  for i = 1, 5 do v[i] = tonumber(v[i]) or 0 end
  return v
end

-- Undo a pending reservation on one scope; false if it is not pending there.
local function undo(base, id, now)
  local pend, pexp = KEYS[base + 11], KEYS[base + 12]
  local packed = redis.call('HGET', pend, id)
  if not packed then return false end
  local f = {}
  for v in string.gmatch(packed, '[^|]+') do f[#f + 1] = v end
  local r, t, n, at, month = tonumber(f[1]), tonumber(f[2]), tonumber(f[3]), tonumber(f[4]), f[5]
  add(base, 1, at, { -r, -t, 0, 0, 0 }, now)
  add(base, 2, at, { -r, -t, 0, 0, 0 }, now)
  if n ~= 0 then redis.call('HINCRBY', KEYS[base + 7], month, int(-n)) end
  redis.call('HDEL', pend, id)
  redis.call('ZREM', pexp, id)
  return true
end

-- Forget reservations past their ttl; what they held stays counted (a call never recorded
-- used its estimate).
local function reap(base, now)
  local expired = redis.call('ZRANGEBYSCORE', KEYS[base + 12], '-inf', now)
  for _, id in ipairs(expired) do redis.call('HDEL', KEYS[base + 11], id) end
  if #expired > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[base + 12], '-inf', now) end
end
