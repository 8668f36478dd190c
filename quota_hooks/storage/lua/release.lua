-- Drop a pending reservation from every scope. KEYS: 12 per scope. ARGV: now, use_server, id.
local now = now_of(ARGV[1], ARGV[2])
local found = 0
for s = 1, #KEYS / PER_SCOPE do
  if undo(1 + (s - 1) * PER_SCOPE - 1, ARGV[3], now) then found = 1 end
end
return found
