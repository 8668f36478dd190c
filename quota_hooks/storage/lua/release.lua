-- Drop a pending reservation from every scope. KEYS: 5 per scope. ARGV: now, use_server, id.
local now = now_of(ARGV[1], ARGV[2])
local id = ARGV[3]
local found = 0
for s = 1, #KEYS / PER_SCOPE do
  local st = load((s - 1) * PER_SCOPE, now, { 'p:' .. id })
  if undo(st, id) then found = 1 end
  flush(st)
end
return found
