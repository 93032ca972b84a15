-- Renew the leases of one key's open tickets: each ticket still in the lease set runs
-- out `lease` from now (a ticket settled meanwhile is not added back).
--
-- KEYS: conc (lease set)
-- ARGV: lease in microseconds, then the ticket ids
-- Returns how many leases were renewed.

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local lease = tonumber(ARGV[1])
local expiry = string.format('%.0f', now + lease)
local renewed = 0
for i = 2, #ARGV do
  renewed = renewed + redis.call('ZADD', KEYS[1], 'XX', 'CH', expiry, ARGV[i])
end
if renewed > 0 then
  redis.call('PEXPIRE', KEYS[1], math.ceil(lease / 1000) + 1)
end
return renewed
