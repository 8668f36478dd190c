-- Release, for each call of a batch: drop a pending reservation from every scope.
-- A call's keys: 5 per scope. Its arguments: now, id, the part to give back (packed
-- requests, tokens, nano-dollars: what a lease still holds unused, or one call's share of
-- it; '' for all). Its result: 1 if it was pending.
local function release(k, a, now)
  local id = ARGV[a + 1]
  local part = nil
  if ARGV[a + 2] ~= '' then part = { struct.unpack('<i8i8i8', ARGV[a + 2]) } end
  local found = 0
  for s = 1, tonumber(ARGV[a - 2]) / PER_SCOPE do
    local st = load(k + (s - 1) * PER_SCOPE, now, { 'p:' .. id })
    if undo(st, id, part) then found = 1 end
  end
  return found
end

return each_call(release)
