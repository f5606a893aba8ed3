"""Caches for auth results, keyed by a digest of the credential (never the credential).

- :class:`SharedCache` — JSON values with a TTL, in Redis when configured (shared by every
  gateway replica), in this process otherwise. A Redis that cannot be reached is a cache miss
  (logged), never an error: the caller asks Globus instead.
- :class:`SingleFlight` — concurrent look-ups of the same key share one call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

import orjson
import redis.asyncio as aioredis

__all__ = ["SharedCache", "SingleFlight"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_MAX_LOCAL = 50_000


class SharedCache:
    def __init__(self, redis: aioredis.Redis | None, *, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix
        self._local: dict[str, tuple[Any, float]] = {}

    async def get(self, key: str) -> Any | None:
        if self._redis is None:
            hit = self._local.get(key)
            if hit is None or hit[1] <= time.monotonic():
                return None
            return hit[0]
        try:
            raw = await self._redis.get(self._prefix + key)
        except (aioredis.RedisError, OSError) as exc:
            log.warning("auth cache: redis get failed (%s); asking Globus", type(exc).__name__)
            return None
        return None if raw is None else orjson.loads(raw)

    async def set(self, key: str, value: Any, ttl_s: float) -> None:
        if ttl_s <= 0:
            return
        if self._redis is None:
            if len(self._local) >= _MAX_LOCAL:
                self._local.clear()
            self._local[key] = (value, time.monotonic() + ttl_s)
            return
        try:
            await self._redis.set(self._prefix + key, orjson.dumps(value), px=max(int(ttl_s * 1000), 1))
        except (aioredis.RedisError, OSError) as exc:
            log.warning("auth cache: redis set failed (%s)", type(exc).__name__)

    async def delete(self, key: str) -> None:
        self._local.pop(key, None)
        if self._redis is not None:
            try:
                await self._redis.delete(self._prefix + key)
            except (aioredis.RedisError, OSError) as exc:
                log.warning("auth cache: redis delete failed (%s)", type(exc).__name__)


class SingleFlight(Generic[_T]):
    """One in-flight call per key; every concurrent caller awaits the same result.

    The call runs as its own task, so a caller that gives up (client disconnect) does not
    cancel it for the others.
    """

    def __init__(self) -> None:
        self._calls: dict[Hashable, asyncio.Task[_T]] = {}

    async def do(self, key: Hashable, fn: Callable[[], Awaitable[_T]]) -> _T:
        task = self._calls.get(key)
        if task is None:
            task = asyncio.ensure_future(fn())
            self._calls[key] = task
            task.add_done_callback(lambda _t: self._calls.pop(key, None))
        return await asyncio.shield(task)
