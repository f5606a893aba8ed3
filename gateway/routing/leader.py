"""Leader election among gateway replicas: a lease on one Redis key.

The replica whose holder id is in the key leads until the key expires. `hold` takes the key
when it is free (``SET NX PX``) or extends it when this replica still holds it, in one Lua
script, so a replica whose lease ran out can never extend another's. Without Redis the process
is alone and always leads; when Redis cannot be reached nobody leads (a replica that cannot
see the lock must not act as if it held it). See https://redis.io/docs/latest/commands/set/
for the lock pattern.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time

import redis.asyncio as aioredis

__all__ = ["LeaderLease", "new_holder_id"]

log = logging.getLogger(__name__)

# KEYS[1]: the lock. ARGV: holder id, ttl in ms. 1 when `holder` holds it afterwards.
_HOLD = """
if redis.call("SET", KEYS[1], ARGV[1], "NX", "PX", ARGV[2]) then
  return 1
end
if redis.call("GET", KEYS[1]) == ARGV[1] then
  redis.call("PEXPIRE", KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# KEYS[1]: the lock. ARGV[1]: holder id. Deletes the lock only if `holder` holds it.
_RELEASE = """
if redis.call("GET", KEYS[1]) == ARGV[1] then
  return redis.call("DEL", KEYS[1])
end
return 0
"""

_ERRORS = (aioredis.RedisError, OSError, TimeoutError)


def new_holder_id() -> str:
    """An id unique to this process: host, pid and a random part (pids are reused)."""
    return f"{socket.gethostname()[:32]}-{os.getpid()}-{secrets.token_hex(4)}"


class LeaderLease:
    def __init__(
        self, redis: aioredis.Redis | None, key: str, ttl_s: float, holder: str | None = None
    ) -> None:
        self.key = key
        self.holder = holder or new_holder_id()
        self._redis = redis
        self._ttl_s = ttl_s
        self._hold = redis.register_script(_HOLD) if redis is not None else None
        self._release = redis.register_script(_RELEASE) if redis is not None else None
        self._valid_until = 0.0  # monotonic: when the lease we last got runs out
        self._state = "alone" if redis is None else "follower"

    @property
    def is_leader(self) -> bool:
        """Whether this replica leads now: alone, or its last `hold` succeeded and the lease has
        not run out since it was asked for."""
        return self._redis is None or time.monotonic() < self._valid_until

    async def hold(self) -> bool:
        """Take or extend the lease; whether this replica leads now. Never raises."""
        if self._hold is None:
            return True
        asked = time.monotonic()
        try:
            # The lease is counted from before the call: Redis may have set it any time after.
            held = await asyncio.wait_for(
                self._hold(keys=[self.key], args=[self.holder, max(int(self._ttl_s * 1000), 1)]),
                timeout=self._ttl_s / 2,
            )
        except _ERRORS as exc:
            self._valid_until = 0.0
            self._change("unreachable", "leader lease: Redis unreachable, not leading", exc)
            return False
        if held:
            self._valid_until = asked + self._ttl_s
            self._change("leader", "leader lease: leading")
        else:
            self._valid_until = 0.0
            self._change("follower", "leader lease: another replica leads")
        return self.is_leader

    async def release(self) -> None:
        """Give the lease up (at shutdown) so another replica takes over at once. Never raises."""
        self._valid_until = 0.0
        if self._release is None:
            return
        try:
            await asyncio.wait_for(
                self._release(keys=[self.key], args=[self.holder]), timeout=self._ttl_s / 2
            )
        except _ERRORS as exc:
            log.warning("leader lease: release failed", extra={"key": self.key, "error": str(exc)})
        self._change("follower", "leader lease: released")

    def _change(self, state: str, message: str, exc: BaseException | None = None) -> None:
        """Log a change of state once, not every renewal."""
        if state == self._state:
            return
        self._state = state
        extra: dict[str, str] = {"key": self.key, "holder": self.holder}
        if exc is not None:
            extra["error"] = str(exc) or type(exc).__name__
        log.log(logging.WARNING if exc is not None else logging.INFO, message, extra=extra)
