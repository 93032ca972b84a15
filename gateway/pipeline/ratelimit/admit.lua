-- Admit one request against every limit of one key, atomically: charge all or nothing.
-- The arithmetic is gcra.py's, in microseconds of this server's clock, so gateways whose
-- clocks disagree still share one timeline.
--
-- KEYS: rpm, tpm, tpd (TATs as strings), conc (sorted set: ticket id -> lease expiry)
-- ARGV: tokens, rpm limit, tpm limit, tpd limit, concurrent limit (0 = unlimited),
--       ticket id ("" = nothing to settle later), lease in microseconds
-- Returns {allowed, held, offset, wait} with offset/wait per rate (requests, tokens,
-- tokens per day), whole microseconds: offset = until the bucket is full (after the
-- charge when allowed), wait = until this request fits (0 fits, -1 never: too large).

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tokens = tonumber(ARGV[1])
local periods = {60000000, 60000000, 86400000000}
local units = {1, tokens, tokens}
local allowed = 1
local reply = {0, 0, 0, 0, 0, 0, 0, 0}
local charged = {}

for i = 1, 3 do
  local capacity = tonumber(ARGV[i + 1])
  if capacity > 0 then
    local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
    local base = math.max(tat, now)
    local offset = base - now
    local wait = 0
    if units[i] > capacity then
      wait = -1
    else
      local increment = units[i] * periods[i] / capacity
      -- one microsecond of slack: float rounding must not refuse an exact fit
      if offset + increment - periods[i] > 1 then
        wait = math.ceil(offset + increment - periods[i])
      else
        charged[i] = base + increment
      end
    end
    if wait ~= 0 then allowed = 0 end
    reply[2 * i + 1] = offset
    reply[2 * i + 2] = wait
  end
end

local slots = tonumber(ARGV[5])
local ticket = ARGV[6]
if slots > 0 or ticket ~= '' then
  -- leases of gateways that died without settling run out here
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', string.format('%.0f', now))
  local held = redis.call('ZCARD', KEYS[4])
  reply[2] = held
  if slots > 0 and held >= slots then allowed = 0 end
end

if allowed == 1 then
  for i = 1, 3 do
    if charged[i] then
      reply[2 * i + 1] = charged[i] - now
      -- the key lives exactly as long as the bucket is not full: then it equals a missing one
      redis.call('SET', KEYS[i], string.format('%.17g', charged[i]),
                 'PX', math.ceil((charged[i] - now) / 1000) + 1)
    end
  end
  if ticket ~= '' then
    local lease = tonumber(ARGV[7])
    redis.call('ZADD', KEYS[4], string.format('%.0f', now + lease), ticket)
    redis.call('PEXPIRE', KEYS[4], math.ceil(lease / 1000) + 1)
  end
end
reply[1] = allowed
for i = 3, 7, 2 do reply[i] = math.ceil(reply[i]) end  -- Redis would truncate fractions
return reply
