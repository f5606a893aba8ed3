"""Check-and-reserve before a request, settle after it; 429s and rate-limit headers.

``reserve`` charges the request against every scope that applies (see
:mod:`gateway.limits.buckets`) in one atomic step; over any limit it raises `RateLimited` (429,
``Retry-After``, the OpenAI ``x-ratelimit-*`` headers) or, for the daily budget, `QuotaExceeded`.
``settle`` releases the concurrency lease and replaces the reserved token estimate with the real
count; it is idempotent and never raises, so every exit path of a request may call it.

When Redis cannot be reached the limiter degrades as configured (``limits.redis_failure``):
*open* admits without limits and raises ``hearth_limiter_degraded`` to 1 and logs loudly;
*closed* answers 503. It never crashes the request path.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from gateway.auth.principal import Principal
from gateway.config import LimitsSettings
from gateway.errors import QuotaExceeded, RateLimited, ServiceUnavailable
from gateway.limits.buckets import Charge, charges_for, scopes_for
from gateway.limits.store import LimitStore, LocalLimitStore, RedisLimitStore
from gateway.metrics import GatewayMetrics

__all__ = ["Limiter", "Reservation"]

log = logging.getLogger(__name__)

_KIND_TEXT = {
    "requests": "requests per minute",
    "tokens": "tokens per minute",
    "daily_tokens": "tokens per day",
    "concurrent": "concurrent requests",
}


@dataclass(slots=True)
class Reservation:
    charges: list[Charge]
    lease_id: str
    tokens: int  # reserved
    used: list[int] = field(default_factory=list)  # after this reservation, per charge
    settled: bool = False

    def headers(self, now: float | None = None) -> dict[str, str]:
        """OpenAI's x-ratelimit-* headers for the tightest request and token limits."""
        now = time.time() if now is None else now
        out: dict[str, str] = {}
        for kind, name in (("requests", "requests"), ("tokens", "tokens")):
            pairs = [(c, u) for c, u in zip(self.charges, self.used, strict=False) if c.kind == kind]
            if not pairs:
                continue
            charge, used = min(pairs, key=lambda p: p[0].limit - p[1])
            out[f"x-ratelimit-limit-{name}"] = str(charge.limit)
            out[f"x-ratelimit-remaining-{name}"] = str(max(charge.limit - used, 0))
            out[f"x-ratelimit-reset-{name}"] = _duration(charge.reset_at - now)
        return out


class Limiter:
    def __init__(
        self,
        settings: LimitsSettings,
        redis: aioredis.Redis | None,
        metrics: GatewayMetrics,
        *,
        lease_ttl_s: float,
        prefix: str = "hearth:limit:",
    ) -> None:
        self._settings = settings
        self._store: LimitStore = RedisLimitStore(redis) if redis is not None else LocalLimitStore()
        self._shared = redis is not None
        self._metrics = metrics
        self._lease_ttl_s = lease_ttl_s
        self._prefix = prefix
        self._tasks: set[asyncio.Task[None]] = set()
        self.enabled = settings.any

    async def reserve(self, principal: Principal, model: str, tokens: int) -> Reservation | None:
        """Charge one request of about ``tokens`` tokens; None when no limit applies to it."""
        scopes = scopes_for(self._settings, principal, model) if self.enabled else []
        if not scopes:
            return None
        now = time.time()
        charges = charges_for(scopes, tokens, now, prefix=self._prefix, lease_ttl_s=self._lease_ttl_s)
        lease_id = secrets.token_hex(8)
        try:
            failed, used = await self._store.reserve(charges, lease_id)
        except (aioredis.RedisError, OSError, TimeoutError) as exc:
            self._degraded(exc)  # raises in closed mode
            return None
        self._metrics.limiter_degraded.set(0)
        if failed:
            raise self._refusal(charges[failed - 1], used[0], now)
        return Reservation(charges, lease_id, tokens, used)

    def settle(self, reservation: Reservation | None, tokens: int) -> None:
        """Release the lease and correct the token counters to ``tokens`` (in the background)."""
        if reservation is None or reservation.settled:
            return
        reservation.settled = True
        task = asyncio.create_task(self._settle(reservation, tokens - reservation.tokens))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for pending settlements (shutdown)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _settle(self, reservation: Reservation, delta: int) -> None:
        try:
            await self._store.settle(reservation.charges, reservation.lease_id, delta)
        except (aioredis.RedisError, OSError, TimeoutError) as exc:
            # Leases expire on their own; a token counter is off by `delta` until its window ends.
            log.warning("rate limiter: settling failed (%s); counters correct themselves", type(exc).__name__)

    def _degraded(self, exc: BaseException) -> None:
        self._metrics.limiter_degraded.set(1)
        mode = self._settings.redis_failure
        log.error("rate limiter: Redis unreachable (%s); failing %s", type(exc).__name__, mode)
        if mode == "closed":
            raise ServiceUnavailable(
                "The gateway's rate limiter is unavailable; try again shortly.", code="limiter_unavailable"
            ) from None

    def _refusal(self, charge: Charge, used: int, now: float) -> RateLimited:
        self._metrics.child(
            self._metrics.limiter_rejections, charge.kind, charge.scope.partition(":")[0]
        ).inc()
        wait = max(charge.reset_at - now, 1.0) if charge.kind != "concurrent" else 1.0
        what = _KIND_TEXT[charge.kind]
        text = (
            f"Rate limit reached for {what} ({charge.scope}): limit {charge.limit}, used {used}, "
            f"requested {charge.cost}."
        )
        if charge.cost > charge.limit:
            text += " This request alone is over the limit: ask for fewer tokens (max_tokens)."
        else:
            text += f" Please try again in {_duration(wait)}."
        headers = {"retry-after": str(math.ceil(wait))}
        kind = "requests" if charge.kind in ("requests", "concurrent") else "tokens"
        if charge.kind in ("requests", "tokens"):
            headers[f"x-ratelimit-limit-{kind}"] = str(charge.limit)
            headers[f"x-ratelimit-remaining-{kind}"] = str(max(charge.limit - used, 0))
            headers[f"x-ratelimit-reset-{kind}"] = _duration(charge.reset_at - now)
        error = QuotaExceeded if charge.kind == "daily_tokens" else RateLimited
        return error(text, headers=headers)


def _duration(seconds: float) -> str:
    """OpenAI's reset format: 20ms, 1s, 6m0s."""
    if seconds < 1:
        return f"{max(int(seconds * 1000), 0)}ms"
    whole = math.ceil(seconds)
    minutes, secs = divmod(whole, 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"
