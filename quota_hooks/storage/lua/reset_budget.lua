-- Start a scope's budget of one month again: its cost ('c') goes back to what pending
-- reservations hold. The recorded charge is the sum of the month's day rows (priced cost and
-- unpriced charge, packed fields 6 and 8); 'rs' keeps what the resets took off so far.
-- KEYS: the month's hash. Returns the nano-dollars taken off.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local flat = redis.call('HGETALL', KEYS[1])
local committed = 0
for i = 1, #flat, 2 do
  if string.sub(flat[i], 1, 2) == 'd:' then
    local _, _, _, _, _, priced, _, unpriced = struct.unpack(C8, flat[i + 1])
    committed = committed + priced + unpriced
  end
end
local before = tonumber(redis.call('HGET', KEYS[1], 'rs')) or 0
local taken = committed - before
if taken ~= 0 then
  redis.call('HINCRBY', KEYS[1], 'c', int(0 - taken))
  redis.call('HSET', KEYS[1], 'rs', int(committed))
end
return taken
