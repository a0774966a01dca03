-- The hot-SKU admission gate: takes ARGV[1] units from the gate if it has them.
-- KEYS[1]: gate counter
-- Returns 1 (admitted), 0 (refused: sold out as far as Redis knows, with the units left as the
-- second value), or -1 (no gate: Redis lost it; Postgres decides and the gate is rebuilt).
local left = redis.call('GET', KEYS[1])
if not left then
  return {-1, 0}
end
left = tonumber(left)
local wanted = tonumber(ARGV[1])
if left < wanted then
  return {0, left}
end
redis.call('DECRBY', KEYS[1], wanted)
return {1, left - wanted}
