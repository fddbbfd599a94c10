"""The Lua of presence (see :mod:`server.store.presence_store`): the scripts
that join connections to a room, renew a worker's lease on it, take
connections out, and put a worker's connections there back in step."""

from __future__ import annotations

from .outbox import OUTBOX_LUA

# Shared by the room scripts. KEYS: counts, users, leases, this worker's held
# set. ARGV[1]: lease (ms), ARGV[2]: this worker, ARGV[3]: the channel,
# ARGV[4]: the prefix of held sets. The sweep drops the connections of every
# other worker whose lease ran out and returns them as {worker, 'user|id', ...}
# so that the caller can free their users' connection slots. (Held sets are named
# from the room's tag: every key a script touches is in the room's slot.)
#
# Webhooks: ARGV[5] holds 'j' to write user.joined events, 'l' user.left
# ('' for neither), ARGV[6] is the room; KEYS[5] (and KEYS[6] on one Redis
# server) are then the outbox keys (see server.store.outbox).
ROOM_PRELUDE = (
    OUTBOX_LUA
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = now + tonumber(ARGV[1])
local changed = false
local function tell(flag, kind, user)
  if string.find(ARGV[5], flag, 1, true) then
    local data = '{"room":' .. cjson.encode(ARGV[6]) .. ',"user_id":' .. cjson.encode(user) .. '}'
    outbox_write(KEYS[5], KEYS[6], ARGV[6], kind, data, string.format('%.3f', now / 1000))
  end
end
local function user_of(conn)
  return string.match(conn, '^([^|]*)')
end
local function gone(user)
  if redis.call('HINCRBY', KEYS[1], user, -1) <= 0 then
    redis.call('HDEL', KEYS[1], user)
    redis.call('ZREM', KEYS[2], user)
    changed = true
    tell('l', 'user.left', user)
  end
end
local function came(conn, user)
  if redis.call('SADD', KEYS[4], conn) == 1 then
    if redis.call('HINCRBY', KEYS[1], user, 1) == 1 then
      redis.call('ZADD', KEYS[2], 0, user)
      changed = true
      tell('j', 'user.joined', user)
    end
  end
end
local swept = {}
for _, worker in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)) do
  if worker ~= ARGV[2] then
    local held = ARGV[4] .. worker
    for _, conn in ipairs(redis.call('SMEMBERS', held)) do
      gone(user_of(conn))
      swept[#swept + 1] = worker
      swept[#swept + 1] = conn
    end
    redis.call('DEL', held)
    redis.call('ZREM', KEYS[3], worker)
  end
end
local function give_up_if_empty()
  if redis.call('SCARD', KEYS[4]) == 0 then
    redis.call('ZREM', KEYS[3], ARGV[2])
  end
end
local function renew()
  local fresh = redis.call('ZADD', KEYS[3], lease, ARGV[2]) == 1
  for i = 1, 3 do
    redis.call('PEXPIREAT', KEYS[i], lease)
  end
  -- A dead worker's held set outlives its lease, so that a sweep finds it.
  redis.call('PEXPIREAT', KEYS[4], lease + tonumber(ARGV[1]))
  return fresh
end
"""
)

EPILOGUE = """
if changed then
  redis.call('PUBLISH', ARGV[3], 'p')
end
"""

# ARGV[7...]: pairs of (connection, user) to add. The first reply is 1 when
# the lease was not there (see RENEW).
JOIN = (
    ROOM_PRELUDE
    + """
local fresh = renew()
for i = 7, #ARGV, 2 do
  came(ARGV[i], ARGV[i + 1])
end
"""
    + EPILOGUE
    + "return {fresh and 1 or 0, swept}\n"
)

# Renews the lease; the first reply is 1 when the lease was not there (this
# worker's connections were swept while it stalled): the caller joins them again.
RENEW = (
    ROOM_PRELUDE
    + """
local fresh = renew()
"""
    + EPILOGUE
    + "return {fresh and 1 or 0, swept}\n"
)

# ARGV[7...]: pairs of (connection, user) to take out. The last connection
# the worker holds in the room gives up its lease. The first reply is always
# 0 (a join's and a leave's replies read alike).
LEAVE = (
    ROOM_PRELUDE
    + """
for i = 7, #ARGV, 2 do
  if redis.call('SREM', KEYS[4], ARGV[i]) == 1 then
    gone(ARGV[i + 1])
  end
end
give_up_if_empty()
"""
    + EPILOGUE
    + "return {0, swept}\n"
)

# ARGV[7...]: pairs of (connection, user): every connection this worker
# holds in the room. Its held set becomes exactly these: those not among
# them go (as in a leave), those missing come (as in a join). For a worker
# whose presence may have parted from what it holds (see
# server.store.presence_sync). Replies as RENEW's, those that went among
# the swept.
SYNC = (
    ROOM_PRELUDE
    + """
local fresh = renew()
local holds = {}
for i = 7, #ARGV, 2 do
  holds[ARGV[i]] = true
end
for _, conn in ipairs(redis.call('SMEMBERS', KEYS[4])) do
  if not holds[conn] then
    redis.call('SREM', KEYS[4], conn)
    gone(user_of(conn))
    swept[#swept + 1] = ARGV[2]  -- (its slots are freed as a dead worker's)
    swept[#swept + 1] = conn
  end
end
for i = 7, #ARGV, 2 do
  came(ARGV[i], ARGV[i + 1])
end
give_up_if_empty()
"""
    + EPILOGUE
    + "return {fresh and 1 or 0, swept}\n"
)
