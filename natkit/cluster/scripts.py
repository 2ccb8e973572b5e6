"""The fleet's state in Redis: key names and the Lua scripts that change it atomically.

Theory of operation. Every worker process of every node is one *member* of the fleet
(``NODE/WORKER``). A member's allocations are counted in a hash of its own, ``held:MEMBER``
(``u:USER`` → allocations of that user, ``total`` → all of them), and its liveness is one key,
``alive:MEMBER``, that expires a *lease* after the member's last heartbeat. A quota check is one
script (`ACQUIRE`), so it is exact across members however many ask at once: Redis runs a script
alone, and the script sums the held counts of the members that are alive, then adds the new
allocation to the caller's own hash or answers 486 (per user) / 508 (total), as a single server's
quota does (RFC 8656 §7.2 item 10). A member that died without a word (SIGKILL, power) stops
heartbeating: once its lease is over the next `ACQUIRE` drops its hash, and its share is free.

A member's own hash is always rebuilt from its own memory (`SYNC`): after a Redis outage, after
its lease ran out (a long partition, a Redis restart that lost the data), or when a write's fate
is unknown (a timeout). The member knows exactly what it holds, so counts converge to the truth
at the next sync whatever was lost on the way.

Keys share one hash tag (``{PREFIX}:...``), so a Redis Cluster keeps a fleet in one slot.
"""

from __future__ import annotations

__all__ = ["ACQUIRE", "BEAT", "LEAVE", "NOT_REGISTERED", "RELEASE", "SYNC", "Keys"]

NOT_REGISTERED = -1
"""What `ACQUIRE`/`RELEASE` answer when the caller's lease is gone: `SYNC` first, then retry."""


class Keys:
    """The key names of one fleet (``cluster.prefix``)."""

    def __init__(self, prefix: str) -> None:
        self.base = "{" + prefix + "}:"
        self.members = self.base + "members"
        self.revoked = self.base + "revoked"
        self.secrets = self.base + "secrets"
        self.users = self.base + "users"

    def alive(self, member: str) -> str:
        return f"{self.base}alive:{member}"

    def held(self, member: str) -> str:
        return f"{self.base}held:{member}"

    def load(self, member: str) -> str:
        return f"{self.base}load:{member}"


# Shared head of ACQUIRE and RELEASE: ARGV[1] base, ARGV[2] member.
_REGISTERED = """
local base, member = ARGV[1], ARGV[2]
if redis.call('EXISTS', base .. 'alive:' .. member) == 0 then return -1 end
"""

ACQUIRE = (
    _REGISTERED
    + """
-- ARGV[3] user, ARGV[4] units, ARGV[5] per_user, ARGV[6] total
local field, units = 'u:' .. ARGV[3], tonumber(ARGV[4])
local user_sum, total_sum = 0, 0
for _, m in ipairs(redis.call('SMEMBERS', base .. 'members')) do
  if redis.call('EXISTS', base .. 'alive:' .. m) == 0 then
    -- its lease ran out: it crashed or lost Redis; its allocations count no more
    redis.call('DEL', base .. 'held:' .. m, base .. 'load:' .. m)
    redis.call('SREM', base .. 'members', m)
  else
    local held = redis.call('HMGET', base .. 'held:' .. m, field, 'total')
    user_sum = user_sum + (tonumber(held[1]) or 0)
    total_sum = total_sum + (tonumber(held[2]) or 0)
  end
end
if user_sum + units > tonumber(ARGV[5]) then return 486 end
if total_sum + units > tonumber(ARGV[6]) then return 508 end
redis.call('HINCRBY', base .. 'held:' .. member, field, units)
redis.call('HINCRBY', base .. 'held:' .. member, 'total', units)
return 0
"""
)

RELEASE = (
    _REGISTERED
    + """
-- ARGV[3] user, ARGV[4] units: never below 0 (a SYNC may have counted the release already)
local key, field, units = base .. 'held:' .. member, 'u:' .. ARGV[3], tonumber(ARGV[4])
local left = (tonumber(redis.call('HGET', key, field)) or 0) - units
if left > 0 then redis.call('HSET', key, field, left) else redis.call('HDEL', key, field) end
local total = (tonumber(redis.call('HGET', key, 'total')) or 0) - units
redis.call('HSET', key, 'total', math.max(total, 0))
return 0
"""
)

SYNC = """
-- ARGV[1] base, ARGV[2] member, ARGV[3] lease ms, then USER COUNT pairs: the member's truth
local base, member = ARGV[1], ARGV[2]
local key = base .. 'held:' .. member
redis.call('DEL', key)
local total = 0
for i = 4, #ARGV, 2 do
  local n = tonumber(ARGV[i + 1])
  if n > 0 then
    redis.call('HSET', key, 'u:' .. ARGV[i], n)
    total = total + n
  end
end
redis.call('HSET', key, 'total', total)
redis.call('SADD', base .. 'members', member)
redis.call('SET', base .. 'alive:' .. member, '1', 'PX', ARGV[3])
return total
"""

BEAT = """
-- ARGV[1] base, ARGV[2] member, ARGV[3] lease ms, then FIELD VALUE pairs of its load.
-- 1 if the lease was still held; 0: it had run out (the caller must SYNC).
local base, member = ARGV[1], ARGV[2]
local alive = base .. 'alive:' .. member
local held = redis.call('EXISTS', alive)
if held == 1 then redis.call('SET', alive, '1', 'PX', ARGV[3]) end
local load = base .. 'load:' .. member
redis.call('DEL', load)
for i = 4, #ARGV, 2 do redis.call('HSET', load, ARGV[i], ARGV[i + 1]) end
redis.call('PEXPIRE', load, ARGV[3])
return held
"""

LEAVE = """
-- ARGV[1] base, ARGV[2] member: a clean stop frees the member's share at once
local base, member = ARGV[1], ARGV[2]
redis.call('DEL', base .. 'alive:' .. member, base .. 'held:' .. member, base .. 'load:' .. member)
redis.call('SREM', base .. 'members', member)
return 0
"""
