-- The window totals of one scope and its cost in a month. KEYS: the scope's 12 keys.
-- ARGV: now, use_server, month. Returns minute r,t,c,e,l, day r,t, month nanos, month unpriced
-- calls, month unpriced nanos.
local now = now_of(ARGV[1], ARGV[2])
reap(0, now)
slide(0, 1, now)
slide(0, 2, now)
local m, d = totals(0, 1), totals(0, 2)
local month = redis.call('HMGET', KEYS[7], ARGV[3], ARGV[3] .. ':uc', ARGV[3] .. ':un')
return { int(m[1]), int(m[2]), int(m[3]), int(m[4]), int(m[5]), int(d[1]), int(d[2]),
         month[1] or '0', month[2] or '0', month[3] or '0' }
