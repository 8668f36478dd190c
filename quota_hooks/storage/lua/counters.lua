-- The window totals of one scope and its cost in a month. KEYS: the scope's 5 keys.
-- ARGV: use_server, 5, 1, now (a batch of one call). Returns the packed totals of the
-- minute and the day windows, then the month's nanos, unpriced calls and unpriced nanos, and
-- when its budget was last reset ('0': never).
local function counters(k, a, now)
  local st = load(k, now, {})
  local month = redis.call('HMGET', KEYS[k + 3], 'c', 'uc', 'un', 'ra')
  return { pack_counts(st.tot[1]), pack_counts(st.tot[2]), month[1] or '0', month[2] or '0',
           month[3] or '0', month[4] or '0' }
end

return each_call(counters)
