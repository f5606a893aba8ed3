"""Demand for each model: what one replica sees, summed over all replicas, and its moving average.

A replica's demand for a model is the requests it has in flight to the model's workers plus
the requests it holds while a cold worker starts. Each replica publishes its numbers to the
`DemandBoard` (a Redis hash per replica that expires unless refreshed), and the scheduler's
leader sums the hashes of the live replicas. `DemandAverage` smooths the total: an exponential
moving average with a half-life, updated with the time that actually passed between samples.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Protocol

import redis.asyncio as aioredis

__all__ = ["DemandAverage", "DemandBoard", "DemandSource", "GatewayDemand"]

log = logging.getLogger(__name__)

_ERRORS = (aioredis.RedisError, OSError, TimeoutError)

# Below this a model's average counts as no demand at all: an exponential average only tends
# to zero, and any demand above zero asks for a worker.
NEGLIGIBLE = 0.05

# KEYS[1]: the set of replicas. ARGV[1]: the prefix of their hashes. Returns a flat list of
# field, value pairs from every live replica's hash, and drops replicas whose hash expired.
# Atomic, so a replica that publishes between the read and the clean-up is not dropped.
_TOTAL = """
local out = {}
for _, replica in ipairs(redis.call("SMEMBERS", KEYS[1])) do
  local fields = redis.call("HGETALL", ARGV[1] .. replica)
  if #fields == 0 then
    redis.call("SREM", KEYS[1], replica)
  else
    for i = 1, #fields do
      out[#out + 1] = fields[i]
    end
  end
end
return out
"""


class DemandSource(Protocol):
    def current(self) -> dict[str, float]:
        """This replica's demand now, by public model name."""
        ...


class GatewayDemand:
    """A replica's demand: the requests in flight at its router, by public model name.

    `in_flight` is `Router.in_flight_by_deployment` ({(model, upstream): n}). Requests held for
    a cold start are not counted: they already drive that start (`ColdStarts`), and counting
    them too would have the scheduler start a second worker before the first shows in a status.
    """

    def __init__(self, in_flight: Callable[[], Mapping[tuple[str, str], int]]) -> None:
        self._in_flight = in_flight

    def current(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for (model, _upstream), n in self._in_flight().items():
            if n > 0:
                out[model] = out.get(model, 0.0) + n
        return out


class DemandBoard:
    """Every replica's demand, shared through Redis (or this replica's alone without it).

    Each replica writes its numbers into ``<prefix>:replica:<id>`` (replacing what it wrote
    before) with an expiry of `ttl_s`, and adds its id to the set ``<prefix>:replicas``. A
    replica that stops publishing drops out when its hash expires.
    """

    def __init__(
        self, redis: aioredis.Redis | None, replica: str, ttl_s: float, *, prefix: str = "hearth:demand"
    ) -> None:
        self.replica = replica
        self._redis = redis
        self._ttl_ms = max(int(ttl_s * 1000), 1)
        self._timeout_s = max(ttl_s / 2, 1.0)
        self._set_key = f"{prefix}:replicas"
        self._hash_prefix = f"{prefix}:replica:"
        self._total = redis.register_script(_TOTAL) if redis is not None else None
        self._local: dict[str, float] = {}
        self._failing = False

    async def publish(self, local: Mapping[str, float]) -> None:
        """Share this replica's demand. A Redis failure is logged (once) and not raised: the
        replica's old numbers expire and the next publish tries again."""
        self._local = {m: float(v) for m, v in local.items() if v > 0}
        if self._redis is None:
            return
        key = self._hash_prefix + self.replica
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                if self._local:
                    pipe.hset(key, mapping={m: repr(v) for m, v in self._local.items()})
                    pipe.pexpire(key, self._ttl_ms)
                    pipe.sadd(self._set_key, self.replica)
                await asyncio.wait_for(pipe.execute(), timeout=self._timeout_s)
        except _ERRORS as exc:
            self._failed("demand board: publish failed", exc)
            return
        self._recovered()

    async def total(self) -> dict[str, float]:
        """The demand of all live replicas together, by model. Raises the Redis error when the
        board cannot be read (a leader without it should not decide from half the picture)."""
        if self._total is None:
            return dict(self._local)
        flat = await asyncio.wait_for(
            self._total(keys=[self._set_key], args=[self._hash_prefix]), timeout=self._timeout_s
        )
        out: dict[str, float] = {}
        for i in range(0, len(flat), 2):
            model = flat[i].decode() if isinstance(flat[i], bytes) else str(flat[i])
            out[model] = out.get(model, 0.0) + float(flat[i + 1])
        return out

    def _failed(self, message: str, exc: BaseException) -> None:
        if not self._failing:
            self._failing = True
            log.warning(message, extra={"replica": self.replica, "error": str(exc) or type(exc).__name__})

    def _recovered(self) -> None:
        if self._failing:
            self._failing = False
            log.info("demand board: Redis reachable again", extra={"replica": self.replica})


class DemandAverage:
    """Exponential moving averages of demand by model, with a half-life in seconds."""

    def __init__(self, halflife_s: float) -> None:
        self._halflife_s = halflife_s
        self._values: dict[str, float] = {}
        self._at: float | None = None

    @property
    def values(self) -> dict[str, float]:
        return dict(self._values)

    def update(self, sample: Mapping[str, float], now: float) -> dict[str, float]:
        """Fold in `sample` (models absent from it count as 0) taken at `now` (seconds); the
        first sample is taken as it is. Averages below `NEGLIGIBLE` become 0."""
        if self._at is None:
            merged = {m: float(v) for m, v in sample.items()}
        else:
            weight = 1.0 - 0.5 ** (max(now - self._at, 0.0) / self._halflife_s)
            merged = {}
            for model in self._values.keys() | sample.keys():
                old = self._values.get(model, 0.0)
                merged[model] = old + weight * (float(sample.get(model, 0.0)) - old)
        self._at = now
        self._values = {m: v for m, v in merged.items() if v >= NEGLIGIBLE}
        return self.values

    def reset(self) -> None:
        self._values = {}
        self._at = None
