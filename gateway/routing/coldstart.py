"""Cold start on demand: a model a site can run but no worker serves is started when asked for.

A model is *cold* on a cluster when the cluster's site lists it (its ``status`` function, see
:mod:`gateway.routing.sites`) and no READY worker serves it. The first request for it asks the
site to start a worker (the ``start_worker`` site function: a Slurm job) on the best allowed
cluster (:mod:`gateway.routing.placement`: one already starting or queued for it, else free
nodes, the admin's priority, the shortest queue), unless a worker for it is already pending or
starting there. Every request for the model then
waits on the same start: the site is polled until the worker is READY, the catalogue is
refreshed, and the requests go on as usual. Streaming clients are held with SSE comment
keep-alives that say the state, how long they have waited and the estimated wait
(:mod:`gateway.routing.startup`); non-streaming ones wait up to ``relay.cold_start_wait_s`` and
then get 503 with ``Retry-After`` and a pointer to /v1/status.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gateway.routing.catalogue import Catalogue
from gateway.routing.placement import pending_worker, rank_sites
from gateway.routing.sites import SiteDirectory
from gateway.routing.startup import StartupClock

__all__ = ["ColdStarts", "Progress"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Progress:
    cluster: str
    state: str  # pending (queued in Slurm), starting (loading the model), ready, failed
    waited_s: float
    estimate_s: float | None = None  # how much longer, if it can be told


class ColdStarts:
    def __init__(
        self,
        catalogue: Catalogue,
        sites: Sequence[SiteDirectory],
        *,
        poll_s: float = 2.0,
        clock: StartupClock | None = None,
        walltimes: dict[str, str] | None = None,
    ) -> None:
        self._catalogue = catalogue
        self._sites = [s for s in sites if s.start_workers]
        self._poll_s = poll_s
        self._clock = clock or StartupClock(default_load_s=120.0)
        self._starts: dict[str, asyncio.Task[None]] = {}
        self._state: dict[str, Progress] = {}
        self._walltimes = walltimes or {}  # public model -> its worker jobs' walltime

    def startable(self, model: str, may_use_cluster: Callable[[str], bool]) -> list[SiteDirectory]:
        """Sites that list `model` and may start it for this caller."""
        return [
            s
            for s in self._sites
            if may_use_cluster(s.cluster) and model in (s.last_status or {}).get("models", ())
        ]

    def progress(self, model: str) -> Progress | None:
        return self._state.get(model)

    async def wait_ready(
        self,
        model: str,
        served: str,
        sites: Sequence[SiteDirectory],
        timeout_s: float,
        on_wait: Callable[[Progress], None] | None = None,
        *,
        tick_s: float = 5.0,
    ) -> bool:
        """Start `served` (the sites' name for the public `model`) if nobody is starting it, and
        wait up to `timeout_s` for a READY worker. ``on_wait`` is called every `tick_s` while
        waiting."""
        started = time.monotonic()
        task = self._starts.get(model)
        if task is None or task.done():
            task = asyncio.ensure_future(self._start(model, served, list(sites)))
            self._starts[model] = task
        while not self._catalogue.deployments(model):
            waited = time.monotonic() - started
            if waited >= timeout_s or (task.done() and not self._catalogue.deployments(model)):
                return bool(self._catalogue.deployments(model))
            if on_wait is not None:
                state = self._state.get(model)
                on_wait(
                    Progress(state.cluster, state.state, waited, state.estimate_s)
                    if state
                    else Progress("", "pending", waited)
                )
            await asyncio.wait({task}, timeout=min(tick_s, max(timeout_s - waited, 0.01)))
        return True

    async def _start(self, model: str, served: str, sites: list[SiteDirectory]) -> None:
        started = time.monotonic()
        site = (rank_sites(served, sites) or sites)[0]
        worker_id = pending_worker(served, site)
        try:
            if worker_id is None:
                worker = await site.relay.start_worker(
                    site.cluster, site.site_config, served, walltime=self._walltimes.get(model)
                )
                worker_id = str(worker["worker_id"])
                log.info("cold start", extra={"model": model, "cluster": site.cluster, "worker": worker_id})
            while True:
                status = await site.relay.site_status(site.cluster, site.site_config)
                site.last_status = status
                self._clock.observe(site.cluster, status)
                view = next((w for w in status.get("workers", []) if w.get("worker_id") == worker_id), None)
                state = str(view.get("state")) if view else "failed"
                estimate = self._clock.estimate(site.cluster, served, status)
                self._state[model] = Progress(site.cluster, state, time.monotonic() - started, estimate)
                if state == "ready":
                    await self._catalogue.refresh()
                    return
                if state in ("failed", "gone"):
                    log.warning("cold start failed", extra={"model": model, "cluster": site.cluster})
                    return
                await asyncio.sleep(self._poll_s)
        except Exception:
            log.exception("cold start of %s on %s failed", model, site.cluster)
            self._state[model] = Progress(site.cluster, "failed", time.monotonic() - started)
