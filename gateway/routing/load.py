"""What each engine is doing: its latest load sample, and whether it still makes progress.

The router ranks a model's workers by the queue a new request would join there. Its own
in-flight count sees only this replica's requests; the engine's metrics (vLLM's /metrics, see
`endpoints.engine_metrics`) see everyone's: requests waiting for a slot and how full the KV
cache is. `LoadBoard` keeps the latest sample per upstream, fed by `DirectLoadPoller` for
upstreams the gateway reaches itself and by `SiteDirectory` for workers a site reports.

A sample is used while it is fresh; a source that stops answering leaves its last sample to go
stale, and then the router falls back to its own in-flight count. The board also tells an
engine that answers /health but does no work: requests running, and its generated-token
counter still, in every sample over `stall_after_s`. The router treats that like an open
circuit breaker until the counter moves again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeGuard

from endpoints.engine_metrics import EngineLoad, metrics_url, parse_engine_load
from gateway.relay.base import Upstream
from gateway.relay.http1 import ConnectionPool, HTTPClientError, Origin

__all__ = ["KV_FULL", "KV_FULL_PENALTY", "DirectLoadPoller", "LoadBoard", "Sample", "load_from_wire"]

log = logging.getLogger(__name__)

# From this KV-cache usage on, vLLM has little room for another sequence: a new request waits
# for blocks to free up or preempts a running one (which is then recomputed). Counted as this
# many extra requests queued ahead of it: more than a couple (so prefix affinity, which accepts
# a worker up to 2 requests busier than the best, does not pick a nearly full one when another
# has room) but not so many that a full cache outweighs a real queue of waiting requests.
KV_FULL = 0.9
KV_FULL_PENALTY = 4


def pressure(load: EngineLoad) -> int:
    """The requests a new one would queue behind at this engine, beyond the gateway's own
    in-flight requests: those waiting for a slot, plus `KV_FULL_PENALTY` when the KV cache is
    nearly full. Running requests are left out: they include the gateway's own."""
    kv = load["kv_cache"]
    return load["waiting"] + (KV_FULL_PENALTY if kv is not None and kv >= KV_FULL else 0)


@dataclass(frozen=True, slots=True)
class Sample:
    """One upstream's latest load, as the router reads it."""

    load: EngineLoad
    at: float  # time.monotonic() when it was read
    fresh_until: float  # used for ranking until then
    pressure: int  # see `pressure`
    busy_since: float | None  # first of the samples, up to this one, busy with the counter still
    stalled: bool  # busy with the counter still for at least stall_after_s


class LoadBoard:
    """The latest `EngineLoad` per upstream name, with the time it was read."""

    def __init__(self, *, stale_after_s: float = 6.0, stall_after_s: float = 30.0) -> None:
        """`stale_after_s`: how long a sample is used by default (about three poll intervals, so
        one lost poll does not drop it); `stall_after_s`: see `stalled`."""
        self.stale_after_s = stale_after_s
        self.stall_after_s = stall_after_s
        self._samples: dict[str, Sample] = {}

    @property
    def samples(self) -> Mapping[str, Sample]:
        """The latest sample per upstream name, fresh or not (the router reads this)."""
        return self._samples

    def update(
        self,
        upstream_name: str,
        load: EngineLoad,
        now: float | None = None,
        *,
        max_age_s: float | None = None,
    ) -> None:
        """Record `load` as read at `now` (time.monotonic()); it is used for `max_age_s`
        (default `stale_after_s`): a source read less often passes a longer one."""
        if now is None:
            now = time.monotonic()
        previous = self._samples.get(upstream_name)
        generated = load["generated_tokens"]
        busy_since: float | None = None
        if load["running"] > 0 and generated is not None:
            still = (
                previous is not None
                and previous.busy_since is not None
                and previous.load["generated_tokens"] == generated
            )
            busy_since = previous.busy_since if still and previous is not None else now
        self._samples[upstream_name] = Sample(
            load=load,
            at=now,
            fresh_until=now + (self.stale_after_s if max_age_s is None else max_age_s),
            pressure=pressure(load),
            busy_since=busy_since,
            stalled=busy_since is not None and now - busy_since >= self.stall_after_s,
        )

    def get(self, upstream_name: str) -> EngineLoad | None:
        """The latest load read from the upstream, however old (None if never read)."""
        sample = self._samples.get(upstream_name)
        return None if sample is None else sample.load

    def fresh(self, upstream_name: str, now: float | None = None) -> Sample | None:
        """The upstream's sample if it is recent enough to route by, else None."""
        sample = self._samples.get(upstream_name)
        if sample is None or sample.fresh_until <= (time.monotonic() if now is None else now):
            return None
        return sample

    def stalled(self, upstream_name: str, now: float | None = None) -> bool:
        """Whether the engine had requests running in every sample over at least
        `stall_after_s` while its generated-token counter did not move. An engine that does not
        report the counter is never stalled; a stale sample says nothing either way."""
        sample = self.fresh(upstream_name, now)
        return sample is not None and sample.stalled

    def forget(self, present: Collection[str], *, prefix: str = "") -> None:
        """Drop the samples of upstreams whose name starts with `prefix` and is not in
        `present` (workers that went away; a worker that comes back starts afresh)."""
        for name in [n for n in self._samples if n.startswith(prefix) and n not in present]:
            del self._samples[name]


def load_from_wire(value: object) -> EngineLoad | None:
    """An `EngineLoad` from a site's JSON status, or None when it is missing or malformed."""
    if not isinstance(value, dict):
        return None
    running, waiting = value.get("running"), value.get("waiting")
    kv, generated = value.get("kv_cache"), value.get("generated_tokens")
    if not (_is_number(running) and _is_number(waiting)):
        return None
    if not (kv is None or _is_number(kv)) or not (generated is None or _is_number(generated)):
        return None
    return EngineLoad(
        running=int(running),
        waiting=int(waiting),
        kv_cache=None if kv is None else float(kv),
        generated_tokens=None if generated is None else float(generated),
    )


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


class DirectLoadPoller:
    """Reads the /metrics of the upstreams the gateway reaches itself, every `interval_s`.

    The upstreams come from a callable (those of clusters whose relay is `direct`), so the
    poller needs no config. All are read at once, each with a short timeout and the
    upstream's API key as Bearer; a read that fails leaves the old sample to go stale.

    The HTTP client is the relay's own (`gateway.relay.http1`), in a pool of its own: a
    keep-alive connection per upstream, reused every poll, for about 0.2 ms of CPU per read of
    the sim engine's page where one httpx.AsyncClient took about 0.9 ms (measured side by side
    on the development machine). Parsing a real vLLM page (~500 lines) costs about 0.8 ms more;
    at one read per upstream every 2 s, both are well under 0.1 % of a core per upstream.
    """

    def __init__(
        self,
        board: LoadBoard,
        upstreams: Callable[[], Iterable[Upstream]],
        *,
        interval_s: float = 2.0,
        timeout_s: float = 1.0,
    ) -> None:
        self.board = board
        self._upstreams = upstreams
        self.interval_s = interval_s
        self._timeout = min(timeout_s, interval_s)
        self._pool = ConnectionPool(max_connections=64, connect_timeout=self._timeout)
        self._targets: dict[str, tuple[Origin, str]] = {}

    async def run(self) -> None:
        """Poll until cancelled; never raises otherwise."""
        while True:
            try:
                await self.poll_once()
            except Exception:  # a bug must not end the loop: routing falls back to in-flight
                log.exception("engine load poll failed")
            await asyncio.sleep(self.interval_s)

    async def poll_once(self) -> None:
        """Read every upstream's metrics once, concurrently, and update the board."""
        upstreams = list(self._upstreams())
        if upstreams:
            await asyncio.gather(*(self._read(u) for u in upstreams))

    async def close(self) -> None:
        await self._pool.close()

    async def _read(self, upstream: Upstream) -> None:
        headers = {"Accept": "text/plain"}
        if upstream.api_key:
            headers["Authorization"] = f"Bearer {upstream.api_key}"
        try:
            origin, target = self._target(upstream)
            async with asyncio.timeout(self._timeout):
                resp = await self._pool.request("GET", origin, target, headers, read_timeout=self._timeout)
                try:
                    body = await resp.read()
                finally:
                    resp.release()  # keeps the connection only if the body was read whole
        except (HTTPClientError, TimeoutError, OSError, ValueError) as exc:  # ValueError: a bad URL
            log.debug("engine metrics unreadable", extra={"upstream": upstream.name, "reason": repr(exc)})
            return
        if resp.status != 200:
            log.debug("engine metrics refused", extra={"upstream": upstream.name, "status": resp.status})
            return
        load = parse_engine_load(body.decode("utf-8", "replace"))
        if load is None:
            log.debug("no engine load in metrics", extra={"upstream": upstream.name})
            return
        self.board.update(upstream.name, load)

    def _target(self, upstream: Upstream) -> tuple[Origin, str]:
        found = self._targets.get(upstream.base_url)
        if found is None:
            origin, path = Origin.of(metrics_url(upstream.base_url))
            found = self._targets[upstream.base_url] = (origin, path or "/")
        return found
