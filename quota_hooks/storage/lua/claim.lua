-- Take KEYS[1] until now + ttl unless someone holds it. ARGV: now, use_server, ttl.
local now = now_of(ARGV[1], ARGV[2])
local held = redis.call('GET', KEYS[1])
if held and tonumber(held) > now then return 0 end
local ttl = tonumber(ARGV[3])
redis.call('SET', KEYS[1], string.format('%.6f', now + ttl), 'PX', math.ceil(ttl * 1000) + 86400000)
return 1
