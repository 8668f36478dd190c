-- Start a scope's budget of one month again: its cost ('c') becomes what the reservations
-- still pending at now hold (what was recorded, and the holds of reservations that expired
-- unrecorded, are taken off), its unpriced calls and charge ('uc', 'un') 0, and 'ra' (reset
-- at) now. KEYS: the scope's 5 keys
-- (lib.lua). ARGV: now. Returns the nano-dollars taken off, or false when the month has no
-- totals. Pending reservations are not kept per month: every live one counts (near a month's
-- start, one made in the last moments of the month before: never less than is held).
if redis.call('EXISTS', KEYS[3]) == 0 then return false end
local now = tonumber(ARGV[1])
local held = 0
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[1], '+inf')
for _, id in ipairs(ids) do
  if id ~= '~' then
    local packed = redis.call('HGET', KEYS[1], 'p:' .. id)
    if packed then
      local _, _, nanos, _, expires = struct.unpack(PENDING, packed)
      if expires > now then held = held + nanos end
    end
  end
end
local before = tonumber(redis.call('HGET', KEYS[3], 'c')) or 0
redis.call('HSET', KEYS[3], 'c', int(held), 'uc', '0', 'un', '0', 'ra', ARGV[1])
return int(before - held)
