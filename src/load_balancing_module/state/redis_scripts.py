"""The Lua scripts of the Redis store (:mod:`.redis`): one per operation, each atomic in Redis.

Each runs with :data:`PRELUDE` before it. Keys a script touches together are named in ``KEYS``.
"""

from typing import Final

# ARGV "now": the injected time, or "" for the Redis server's clock. Numbers go back as
# strings: Redis turns a Lua number into an integer reply, and stored values keep 17 digits.
PRELUDE: Final = """
local function now(arg)
  if arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function num(x) return string.format('%.17g', x) end
local function keep_index(key, ms)  -- a session index outlives its longest session, no longer
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
end
local STEP, PURGE_STEP = 100, 10000
-- The protected segment's least recently used over its room move to probation (scores kept).
local function demote(protected, probation, room, ms)
  local over = redis.call('ZCARD', protected) - room
  if over <= 0 then return end
  local moved = redis.call('ZPOPMIN', protected, math.min(over, STEP))
  for i = 1, #moved, 2 do redis.call('ZADD', probation, moved[i + 1], moved[i]) end
  keep_index(probation, ms)
end
-- The n soonest to expire of an index go, with their keys. Returns how many went, how many were live.
local function evict(index, n, t, prefix)
  local gone = redis.call('ZPOPMIN', index, n)
  local live = 0
  for i = 1, #gone, 2 do
    redis.call('DEL', prefix .. gone[i])
    if tonumber(gone[i + 1]) > t then live = live + 1 end
  end
  return #gone / 2, live
end
"""

# KEYS: bucket. ARGV: rate, burst, now. Returns the seconds until a token is available ("0": taken).
# The key expires once the bucket would be full again (a full bucket is the same as none), plus 1 s.
TAKE_TOKEN: Final = """
local rate, burst, t = tonumber(ARGV[1]), tonumber(ARGV[2]), now(ARGV[3])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = burst
if b[1] then tokens = math.min(burst, tonumber(b[1]) + math.max(t - tonumber(b[2]), 0) * rate) end
local wait = 0
if tokens >= 1 - 1e-9 then tokens = math.max(tokens - 1, 0) else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', num(tokens), 'at', num(t))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return num(wait)
"""

# KEYS: block, attempts. ARGV: threshold, block_seconds, now. Returns {seconds blocked, 1 if newly}.
# Attempts are counted in fixed one-second windows, as MemoryStore does.
RECORD_ATTEMPT: Final = """
local threshold, block, t = tonumber(ARGV[1]), tonumber(ARGV[2]), now(ARGV[3])
local blocked = redis.call('GET', KEYS[1])
if blocked then
  local left = tonumber(blocked) - t
  if left > 0 then return {num(left), 0} end
  redis.call('DEL', KEYS[1])
end
local second = math.floor(t)
local c = redis.call('HMGET', KEYS[2], 'window', 'count')
local count = 1
if c[1] and tonumber(c[1]) == second then count = tonumber(c[2]) + 1 end
if count > threshold and block > 0 then
  redis.call('SET', KEYS[1], num(t + block), 'PX', math.ceil(block * 1000))
  redis.call('DEL', KEYS[2])
  return {num(block), 1}
end
redis.call('HSET', KEYS[2], 'window', num(second), 'count', count)
redis.call('PEXPIRE', KEYS[2], 2000)
return {'0', 0}
"""

# Sessions: a segmented LRU in two sorted sets scored by expiry (the least recently used expire
# first): <prefix>sessions:probation holds sessions bound and not looked up since, <prefix>sessions
# the protected ones, looked up again. Each script demotes or evicts at most STEP sessions, so a
# lowered max_sessions is caught up with over later calls instead of in one long script.

# KEYS: session, protected, probation. ARGV: ttl, now, session id, protected room.
# Returns the bound backend id, or nil. A hit moves the session to the protected segment.
GET_SESSION: Final = """
local ttl, t = tonumber(ARGV[1]), now(ARGV[2])
local s = redis.call('HMGET', KEYS[1], 'backend', 'expires')
if not s[1] then return false end
if tonumber(s[2]) <= t then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[3])
  redis.call('ZREM', KEYS[3], ARGV[3])
  return false
end
local ms, expires = math.ceil(ttl * 1000), num(t + ttl)
redis.call('HSET', KEYS[1], 'expires', expires)
redis.call('PEXPIRE', KEYS[1], ms)
redis.call('ZREM', KEYS[3], ARGV[3])
redis.call('ZADD', KEYS[2], expires, ARGV[3])
keep_index(KEYS[2], ms)
demote(KEYS[2], KEYS[3], tonumber(ARGV[4]), ms)
return s[1]
"""

# KEYS: session, protected, probation. ARGV: backend id, ttl, now, session id, max sessions,
# protected room, session key prefix. A new binding enters probation; a rebind of a protected
# session stays protected. Over max sessions, probation's soonest to expire go (then, only while
# a lowered max is caught up with, the protected segment's). Returns how many live sessions went.
BIND_SESSION: Final = """
local ttl, t = tonumber(ARGV[2]), now(ARGV[3])
local ms, expires = math.ceil(ttl * 1000), num(t + ttl)
redis.call('HSET', KEYS[1], 'backend', ARGV[1], 'expires', expires)
redis.call('PEXPIRE', KEYS[1], ms)
if redis.call('ZSCORE', KEYS[2], ARGV[4]) then
  redis.call('ZADD', KEYS[2], expires, ARGV[4])
  keep_index(KEYS[2], ms)
  return 0
end
redis.call('ZADD', KEYS[3], expires, ARGV[4])
keep_index(KEYS[3], ms)
demote(KEYS[2], KEYS[3], tonumber(ARGV[6]), ms)
local over = redis.call('ZCARD', KEYS[2]) + redis.call('ZCARD', KEYS[3]) - tonumber(ARGV[5])
if over <= 0 then return 0 end
over = math.min(over, STEP)
local popped, live = evict(KEYS[3], over, t, ARGV[7])
if popped < over then
  local _, more = evict(KEYS[2], over - popped, t, ARGV[7])
  live = live + more
end
return live
"""

# KEYS: protected, probation. ARGV: now. Live sessions are those whose expiry is after now: O(log n).
SESSION_COUNT: Final = """
local after = '(' .. num(now(ARGV[1]))
return redis.call('ZCOUNT', KEYS[1], after, '+inf') + redis.call('ZCOUNT', KEYS[2], after, '+inf')
"""

# KEYS: protected, probation. ARGV: now. Drops the index entries of expired sessions (the lowest
# scores), at most PURGE_STEP per index a call; their keys expire by TTL. Returns how many went.
PURGE: Final = """
local t, removed = num(now(ARGV[1])), 0
for i = 1, 2 do
  local n = math.min(redis.call('ZCOUNT', KEYS[i], '-inf', t), PURGE_STEP)
  if n > 0 then removed = removed + redis.call('ZREMRANGEBYRANK', KEYS[i], 0, n - 1) end
end
return removed
"""

# KEYS: secret. ARGV: the key to store if there is none (hex). Returns the stored one: the first
# balancer to ask sets it, and a key lost with a Redis restart is set again by the next to ask.
SHARED_SECRET: Final = """
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('GET', KEYS[1])
"""
