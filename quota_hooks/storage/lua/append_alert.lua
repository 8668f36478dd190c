-- Add an entry to a scope's alert history (a list, newest first) and keep the last ARGV[2].
-- KEYS: the list. ARGV: the entry's JSON, how many to keep.
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[2]) - 1)
redis.call('EXPIRE', KEYS[1], LONG_TTL)
return 1
