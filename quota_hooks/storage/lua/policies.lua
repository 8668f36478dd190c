-- The policy table and its version, unless the version is still ARGV[1]. KEYS: the version,
-- the table.
local version = redis.call('GET', KEYS[1]) or '0'
if version == ARGV[1] then return { version } end
return { version, redis.call('HGETALL', KEYS[2]) }
