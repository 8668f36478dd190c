-- The window totals of one scope and its cost in a month. KEYS: the scope's 12 keys.
-- ARGV: now, use_server, month. Returns minute r,t,c,e,l, day r,t, month nanos.
local now = now_of(ARGV[1], ARGV[2])
reap(0, now)
slide(0, 1, now)
slide(0, 2, now)
local m, d = totals(0, 1), totals(0, 2)
local nanos = redis.call('HGET', KEYS[7], ARGV[3]) or '0'
return { int(m[1]), int(m[2]), int(m[3]), int(m[4]), int(m[5]), int(d[1]), int(d[2]), nanos }
