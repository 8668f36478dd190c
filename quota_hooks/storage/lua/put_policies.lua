-- Write policies under one new table version. KEYS: the version, the table (a hash of
-- key -> "<version> <updated_at> <JSON>"). ARGV: now, only_if_new ('1': only in a store that
-- never held a policy), the version expected ('' for any), then key, JSON pairs (an empty
-- JSON deletes the key). Returns the new version, or nil when nothing was written.
if ARGV[2] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then return false end
if ARGV[3] ~= '' and (tonumber(redis.call('GET', KEYS[1])) or 0) ~= tonumber(ARGV[3]) then
  return false
end
local version = redis.call('INCR', KEYS[1])
for i = 4, #ARGV, 2 do
  if ARGV[i + 1] == '' then
    redis.call('HDEL', KEYS[2], ARGV[i])
  else
    redis.call('HSET', KEYS[2], ARGV[i], version .. ' ' .. ARGV[1] .. ' ' .. ARGV[i + 1])
  end
end
return version
