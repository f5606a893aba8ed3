"""Where limit counters live: one Redis shared by every replica, or this process.

Both stores check every charge and then apply all of them, or none, in one atomic step: the
Redis store in one Lua script (so N replicas admit exactly N requests for a limit of N), the
local store between two awaits of a single event loop.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence

import redis.asyncio as aioredis

from gateway.limits.buckets import Charge

__all__ = ["LimitStore", "LocalLimitStore", "RedisLimitStore"]

# KEYS: the counters and lease sets. ARGV: now_ms, lease_id, then per key: kind, limit, cost, ttl_ms.
# Returns {0, used_1, ..., used_n} when admitted, {i, used_i} when key i would go over its limit.
_RESERVE = """
local now = tonumber(ARGV[1])
local lease = ARGV[2]
local used = {}
for i = 1, #KEYS do
  local b = 2 + (i - 1) * 4
  local kind, limit, cost = ARGV[b + 1], tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3])
  local u
  if kind == "lease" then
    redis.call("ZREMRANGEBYSCORE", KEYS[i], "-inf", now)
    u = redis.call("ZCARD", KEYS[i])
  else
    u = tonumber(redis.call("GET", KEYS[i]) or "0")
  end
  if u + cost > limit then
    return {i, u}
  end
  used[i] = u + cost
end
for i = 1, #KEYS do
  local b = 2 + (i - 1) * 4
  local kind, ttl = ARGV[b + 1], tonumber(ARGV[b + 4])
  if kind == "lease" then
    redis.call("ZADD", KEYS[i], now + ttl, lease)
    redis.call("PEXPIRE", KEYS[i], ttl)
  else
    redis.call("INCRBY", KEYS[i], ARGV[b + 3])
    redis.call("PEXPIRE", KEYS[i], ttl)
  end
end
table.insert(used, 1, 0)
return used
"""


class LimitStore(ABC):
    @abstractmethod
    async def reserve(self, charges: Sequence[Charge], lease_id: str) -> tuple[int, list[int]]:
        """Apply all charges or none. ``(0, used after each charge)`` when admitted, else
        ``(i, [used before])`` for the first charge (1-based) that would exceed its limit."""

    @abstractmethod
    async def settle(self, charges: Sequence[Charge], lease_id: str, token_delta: int) -> None:
        """Release leases; move token counters by ``token_delta`` (real minus reserved)."""


class RedisLimitStore(LimitStore):
    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self._script = redis.register_script(_RESERVE)

    async def reserve(self, charges: Sequence[Charge], lease_id: str) -> tuple[int, list[int]]:
        args: list[str | int] = [int(time.time() * 1000), lease_id]
        for c in charges:
            args += ["lease" if c.lease else "count", c.limit, c.cost, c.ttl_ms]
        result = await self._script(keys=[c.key for c in charges], args=args)
        return int(result[0]), [int(v) for v in result[1:]]

    async def settle(self, charges: Sequence[Charge], lease_id: str, token_delta: int) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            for c in charges:
                if c.lease:
                    pipe.zrem(c.key, lease_id)
                elif c.settles and token_delta:
                    pipe.incrby(c.key, token_delta)
            await pipe.execute()


class LocalLimitStore(LimitStore):
    def __init__(self) -> None:
        self._counters: dict[str, tuple[int, float]] = {}  # key -> (value, expires at)
        self._leases: dict[str, dict[str, float]] = {}  # key -> lease id -> expires at

    async def reserve(self, charges: Sequence[Charge], lease_id: str) -> tuple[int, list[int]]:
        now = time.time()
        if len(self._counters) > 100_000:
            self._counters = {k: v for k, v in self._counters.items() if v[1] > now}
        used = []
        for i, c in enumerate(charges, 1):
            u = self._used(c, now)
            if u + c.cost > c.limit:
                return i, [u]
            used.append(u + c.cost)
        for c in charges:
            if c.lease:
                self._leases.setdefault(c.key, {})[lease_id] = now + c.ttl_ms / 1000
            else:
                value, _ = self._counters.get(c.key, (0, 0.0))
                self._counters[c.key] = (value + c.cost, now + c.ttl_ms / 1000)
        return 0, used

    async def settle(self, charges: Sequence[Charge], lease_id: str, token_delta: int) -> None:
        for c in charges:
            if c.lease:
                self._leases.get(c.key, {}).pop(lease_id, None)
            elif c.settles and token_delta and c.key in self._counters:
                value, expires = self._counters[c.key]
                self._counters[c.key] = (value + token_delta, expires)

    def _used(self, c: Charge, now: float) -> int:
        if c.lease:
            leases = self._leases.get(c.key, {})
            for lease, expires in list(leases.items()):
                if expires <= now:
                    del leases[lease]
            return len(leases)
        value, expires = self._counters.get(c.key, (0, 0.0))
        return value if expires > now else 0
