-- The window totals of one scope and its cost in a month. KEYS: the scope's 5 keys.
-- ARGV: now, use_server. Returns the packed totals of the minute and the day windows,
-- then the month's nanos, unpriced calls and unpriced nanos.
local now = now_of(ARGV[1], ARGV[2])
local st = load(0, now, {})
flush(st)
local month = redis.call('HMGET', KEYS[3], 'c', 'uc', 'un')
return { pack_counts(st.tot[1]), pack_counts(st.tot[2]), month[1] or '0', month[2] or '0',
         month[3] or '0' }
