"""One rate limit for the whole cluster, kept in Redis.

Kie rejects (HTTP 429), rather than queues, what goes over its limit, and
Celery's own ``rate_limit`` is per worker. `RateLimiter` is shared by every
worker process on every host that uses the same Redis. Each decision is one
Lua script that reads Redis's own clock (``TIME``), so hosts with skewed clocks
still agree.

How a decision is made (`RateLimiter.acquire`):

1. A cluster-wide **pause** (after a 429 or a 455) stops everyone until it ends.
2. For generates, a **credits hold** (after a 402/433) stops everyone; one
   caller at a time is told to ``probe`` the credit endpoint.
3. A job without a ticket **reserves a slot**: the earliest time at which one
   more call keeps every window of ``per_seconds`` at or under ``limit``
   (exact sliding window over all reservations). Jobs are served in the order
   they reserved, so nobody starves, and a crowd of waiting jobs does not wake
   up at once.
4. When its slot has come, the call passes only if the exact sliding window
   of calls really let through (``sent``) has room; this absorbs the jitter
   between a slot and the moment a worker gets to it.

Windows are ``per_seconds + margin_s`` long, so network jitter between our
send and Kie's count does not push Kie's own window over the limit.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from kie_covers.config import keys

_ACQUIRE = """
-- KEYS: 1 sent, 2 slots, 3 tickets, 4 pause, 5 credits hold, 6 credits probe,
--       7 (optional) a hash whose counter ARGV[7] gets one more call when it is 'ok'
-- ARGV: 1 job id, 2 limit, 3 window ms, 4 gate on credits (1/0), 5 probe ms, 6 tickets ttl ms,
--       7 counter field
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local paused = redis.call('PTTL', KEYS[4])
if paused > 0 then return {paused, redis.call('GET', KEYS[4]) or 'paused'} end
if ARGV[4] == '1' and redis.call('EXISTS', KEYS[5]) == 1 then
  if redis.call('SET', KEYS[6], ARGV[1], 'NX', 'PX', ARGV[5]) then return {0, 'probe'} end
  return {math.max(redis.call('PTTL', KEYS[6]), 1), 'out_of_credits'}
end
local limit = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
-- A ticket (the job's reserved slot) is kept only while its holder has to wait.
local held = redis.call('HGET', KEYS[3], ARGV[1])
local slot
if held then
  slot = tonumber(held)
else
  slot = now
  local n = redis.call('ZCARD', KEYS[2])
  if n >= limit then
    local kth = redis.call('ZRANGE', KEYS[2], n - limit, n - limit, 'WITHSCORES')
    slot = math.max(now, tonumber(kth[2]) + window)
  end
  redis.call('ZADD', KEYS[2], slot, ARGV[1] .. ':' .. slot)
end
local wait = 0
if slot > now then
  wait = slot - now
elseif redis.call('ZCARD', KEYS[1]) >= limit then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  wait = tonumber(oldest[2]) + window - now + 1
end
if wait > 0 then
  if not held then
    redis.call('HSET', KEYS[3], ARGV[1], slot)
    redis.call('PEXPIRE', KEYS[3], ARGV[6])
  end
  return {wait, 'rate_limit'}
end
redis.call('ZADD', KEYS[1], now, ARGV[1] .. ':' .. now)
redis.call('PEXPIRE', KEYS[1], window * 2)
if held then redis.call('HDEL', KEYS[3], ARGV[1]) end
if KEYS[7] then redis.call('HINCRBY', KEYS[7], ARGV[7], 1) end
return {0, 'ok'}
"""

_PAUSE = """
-- KEYS[1] pause; ARGV ms, reason. Keeps the longer of the current and the new pause.
local left = redis.call('PTTL', KEYS[1])
if left < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[1])
  return 1
end
return 0
"""


@dataclass(frozen=True)
class Gate:
    """A limiter's answer.

    Attributes:
        wait_ms: milliseconds to wait before asking again; 0 means go now.
        reason: ``ok`` (go), ``probe`` (check the credits, then ask again),
            ``rate_limit``, ``rate_limited`` or ``maintenance`` (paused after Kie
            said so), or ``out_of_credits`` (held until credits return).
    """

    wait_ms: int
    reason: str

    @property
    def go(self) -> bool:
        """True when the call may be made now."""
        return self.reason == "ok"

    @property
    def wait_s(self) -> float:
        """The wait in seconds."""
        return self.wait_ms / 1000.0


class RateLimiter:
    """A cluster-wide limit of `limit` calls per `per_seconds`.

    Args:
        client: Redis (shared by every worker that must share the limit).
        name: the limiter's name in its Redis keys (``generate``, ``status``).
        limit: calls allowed in any window.
        per_seconds: the window, in seconds.
        margin_s: seconds added to the window to absorb network jitter (default 0.1).
        gate_on_credits: whether the credits hold stops this limiter's calls.
        probe_every_s: seconds between credit checks while credits are held.
    """

    def __init__(self, client: redis.Redis, name: str, limit: int, per_seconds: float,
                 margin_s: float = 0.1, gate_on_credits: bool = False,
                 probe_every_s: float = 60.0) -> None:
        self.redis = client
        self.name = name
        self.limit = limit
        self.per_seconds = per_seconds
        self.window_ms = int((per_seconds + margin_s) * 1000)
        self.gate_on_credits = gate_on_credits
        self.probe_every_ms = max(1, int(probe_every_s * 1000))
        self._acquire = client.register_script(_ACQUIRE)
        self._pause = client.register_script(_PAUSE)

    def acquire(self, job_id: str, count: tuple[str, str] | None = None) -> Gate:
        """Ask to make one call for `job_id` now (see the module docstring).

        Args:
            count: (hash key, field): when the call may go, that counter gets one
                more in the same step (a job's ``attempts`` or ``polls``).
        """
        extra_keys, extra_args = ([count[0]], [count[1]]) if count else ([], [])
        wait_ms, reason = self._acquire(
            keys=[keys.rate_sent(self.name), keys.rate_slots(self.name),
                  keys.rate_tickets(self.name), keys.PAUSE, keys.CREDITS_HOLD,
                  keys.CREDITS_PROBE, *extra_keys],
            args=[job_id, self.limit, self.window_ms, "1" if self.gate_on_credits else "0",
                  self.probe_every_ms, max(3_600_000, self.window_ms * 10), *extra_args],
        )
        return Gate(int(wait_ms), str(reason))


def pause_all(client: redis.Redis, seconds: float, reason: str) -> bool:
    """Stop every worker's calls to Kie for `seconds` (keeps a longer pause in force).

    Returns:
        True if this call set or lengthened the pause.
    """
    script = client.register_script(_PAUSE)
    return bool(script(keys=[keys.PAUSE], args=[max(1, int(seconds * 1000)), reason]))


def pause_left_s(client: redis.Redis) -> float:
    """Seconds the current cluster-wide pause has left (0 if none)."""
    left = int(client.pttl(keys.PAUSE))
    return max(0, left) / 1000.0


def hold_credits(client: redis.Redis, reason: str) -> bool:
    """Stop all generates until a credit check finds credits. True if newly held."""
    return bool(client.set(keys.CREDITS_HOLD, reason, nx=True))


def release_credits(client: redis.Redis) -> None:
    """Let generates flow again (a credit check found credits)."""
    client.delete(keys.CREDITS_HOLD, keys.CREDITS_PROBE)
