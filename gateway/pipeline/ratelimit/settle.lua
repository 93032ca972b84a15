-- Settle one ticket: free its concurrency slot, refund the unused reservation (never above
-- the bucket's capacity) or charge what was used beyond it. Removing the ticket from the
-- lease set is what makes this idempotent: only the call that removes it adjusts buckets.
--
-- KEYS: tpm, tpd (TATs), conc (lease set)
-- ARGV: ticket id, reserved - used (> 0 refunds, < 0 charges), tpm limit, tpd limit
-- Returns 1 when this call settled the ticket, 0 when it was settled already or its lease
-- ran out.

if redis.call('ZREM', KEYS[3], ARGV[1]) == 0 then return 0 end
local delta = tonumber(ARGV[2])
if delta == 0 then return 1 end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local periods = {60000000, 86400000000}

for i = 1, 2 do
  local capacity = tonumber(ARGV[i + 2])
  if capacity > 0 then
    local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
    local increment = math.abs(delta) * periods[i] / capacity
    if delta > 0 then
      tat = math.max(tat - increment, now)
    else
      tat = math.max(tat, now) + increment
    end
    if tat > now then
      redis.call('SET', KEYS[i], string.format('%.17g', tat),
                 'PX', math.ceil((tat - now) / 1000) + 1)
    else
      redis.call('DEL', KEYS[i])
    end
  end
end
return 1
