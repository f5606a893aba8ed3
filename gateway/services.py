"""The long-lived parts of one gateway process, built from settings and held on app.state."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from endpoints.local import LocalCompute
from gateway.auth.authenticator import Authenticator
from gateway.auth.setup import GlobusAuth, build_auth
from gateway.batch.runner import BatchRunner
from gateway.batch.setup import build_runner
from gateway.config import ComputeSettings, Settings
from gateway.limits.limiter import Limiter
from gateway.metrics import GatewayMetrics
from gateway.relay.base import Relay, Upstream
from gateway.relay.bridge import LocalStreamBridge, StreamBridge
from gateway.relay.bridge_redis import RedisStreamBridge
from gateway.relay.clusters import ClusterRelays
from gateway.relay.compute import CloudTransport, ComputeRelay, ComputeTransport, LocalTransport
from gateway.relay.direct import DirectRelay
from gateway.relay.dispatch import Dispatcher
from gateway.routing.catalogue import Catalogue, ModelRule, UpstreamSource
from gateway.routing.coldstart import ColdStarts
from gateway.routing.demand import DemandBoard, GatewayDemand
from gateway.routing.leader import LeaderLease, new_holder_id
from gateway.routing.load import DirectLoadPoller, LoadBoard
from gateway.routing.router import Router
from gateway.routing.scheduler import Scheduler
from gateway.routing.sites import SiteDirectory
from gateway.routing.startup import StartupClock
from gateway.store.audit import AuditLog
from gateway.store.batches import BatchStore
from gateway.store.database import Database
from gateway.store.files import FileStore
from gateway.store.keys import KeyStore
from gateway.store.rollups import Rollups
from gateway.store.usage import UsageRecorder
from gateway.tracing import Tracing, build_tracing

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    db: Database
    keys: KeyStore
    usage: UsageRecorder
    relay: ClusterRelays
    bridge: StreamBridge
    catalogue: Catalogue
    router: Router
    dispatcher: Dispatcher
    auth: Authenticator
    metrics: GatewayMetrics
    redis: aioredis.Redis | None
    audit: AuditLog
    limiter: Limiter
    rollups: Rollups
    files: FileStore
    batches: BatchStore
    batch_runner: BatchRunner
    cold_starts: ColdStarts
    startup_clock: StartupClock
    load_poller: DirectLoadPoller
    scheduler: Scheduler
    globus: GlobusAuth | None = None
    sites: list[SiteDirectory] = field(default_factory=list)
    tracing: Tracing | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    def build(cls, settings: Settings) -> Services:
        metrics = GatewayMetrics()
        db = Database(settings.store.url)
        keys = KeyStore(db)
        usage = UsageRecorder(
            db,
            batch_size=settings.store.usage_batch_size,
            flush_interval_s=settings.store.usage_flush_interval_s,
        )
        r = settings.relay
        direct = DirectRelay(
            connect_timeout_s=r.connect_timeout_s,
            request_timeout_s=r.request_timeout_s,
            stream_idle_timeout_s=r.stream_idle_timeout_s,
            max_connections=r.max_connections,
        )
        # Bounded waits: a Redis that hangs must fail a request's limiter or cache look-up
        # quickly (each has a degraded mode), not hold it; stream reads block for at most seconds.
        client = (
            aioredis.Redis.from_url(settings.redis.url, socket_connect_timeout=2.0, socket_timeout=15.0)
            if settings.redis.url
            else None
        )
        # With Redis the replicas share one bridge: a site's callback may reach any of them.
        # A reader waits a minute longer than the site does for the worker's next event.
        bridge_idle_s = r.stream_idle_timeout_s + 60.0
        bridge: StreamBridge = (
            RedisStreamBridge(client, idle_timeout_s=bridge_idle_s)
            if client is not None
            else LocalStreamBridge(idle_timeout_s=bridge_idle_s)
        )
        relay = ClusterRelays(compute_relays(settings, bridge), default=direct)
        # The engines' load: read by the gateway from `direct` upstreams, reported by the sites
        # (with their status, every discovery interval) for compute clusters.
        board = LoadBoard(stale_after_s=3 * r.load_poll_s, stall_after_s=r.stall_after_s)
        directories = [
            SiteDirectory(
                name,
                compute,
                settings.clusters[name].compute.site_config,
                start_workers=settings.clusters[name].compute.start_workers,
                priority=settings.clusters[name].priority,
                board=board,
                load_max_age_s=3 * r.discovery_interval_s,
            )
            for name, compute in relay.by_cluster.items()
            if isinstance(compute, ComputeRelay) and settings.clusters[name].compute.discover_workers
        ]
        catalogue = Catalogue(upstream_sources(settings), relay, model_rules(settings), directories)
        router = Router(
            catalogue, cooldown_s=r.failure_cooldown_s, board=board, prefix_affinity=r.prefix_affinity
        )
        direct_upstreams = [
            s.upstream
            for s in upstream_sources(settings)
            if settings.clusters[s.upstream.cluster].relay == "direct"
        ]
        load_poller = DirectLoadPoller(
            board, lambda: direct_upstreams, interval_s=r.load_poll_s, timeout_s=min(1.0, r.load_poll_s / 2)
        )
        # A lease outlives the longest request, so a replica that dies frees its slots in time.
        limiter = Limiter(settings.limits, client, metrics, lease_ttl_s=r.request_timeout_s + 60.0)
        tracing = build_tracing(settings.tracing)
        dispatcher = Dispatcher(
            router, relay, metrics, usage, max_attempts=r.max_attempts, limiter=limiter, tracing=tracing
        )
        audit = AuditLog(db, enabled=settings.auth.audit)
        st = settings.store
        rollups = Rollups(db, interval_s=st.rollup_interval_s, retention_days=st.usage_retention_days)
        auth, globus = build_auth(settings, keys, client, audit, metrics)
        files = FileStore(db, settings.batch.files_dir)
        batches = BatchStore(db)
        batch_runner = build_runner(settings, batches, files, dispatcher, catalogue, relay, directories)
        clock = StartupClock(default_load_s=r.cold_start_estimate_s)
        catalogue.observe_status(clock.observe)
        walltimes = {name: m.walltime for name, m in settings.models.items() if m.walltime}
        cold_starts = ColdStarts(catalogue, directories, clock=clock, walltimes=walltimes)
        holder = new_holder_id()
        sc = settings.scheduler
        scheduler = Scheduler(
            settings, directories, GatewayDemand(router.in_flight_by_deployment),
            DemandBoard(client, holder, ttl_s=3 * sc.interval_s),
            LeaderLease(client, "hearth:scheduler:leader", sc.leader_ttl_s, holder), metrics,
            catalogue.refresh,
        )  # fmt: skip
        return cls(
            settings, db, keys, usage, relay, bridge, catalogue, router, dispatcher, auth, metrics, client,
            audit, limiter, rollups, files, batches, batch_runner, cold_starts, clock, load_poller, scheduler,
            globus, sites=directories, tracing=tracing,
        )  # fmt: skip

    async def start(self) -> None:
        if self.settings.store.migrate_on_start:
            await self.db.migrate()
        await self.usage.start()
        await self.audit.start()
        await asyncio.gather(
            *(r.start() for r in self.relay.by_cluster.values() if isinstance(r, ComputeRelay))
        )
        await self.catalogue.refresh()
        self._tasks.append(
            asyncio.create_task(
                self.catalogue.run_discovery(self.settings.relay.discovery_interval_s),
                name="hearth-model-discovery",
            )
        )
        self._tasks.append(asyncio.create_task(self.rollups.run(), name="hearth-usage-rollups"))
        self._tasks.append(asyncio.create_task(self.batch_runner.run(), name="hearth-batch-runner"))
        self._tasks.append(asyncio.create_task(self.load_poller.run(), name="hearth-engine-load"))
        self._tasks.append(asyncio.create_task(self.scheduler.run(), name="hearth-scheduler"))
        # Everything built so far lives as long as the process: keep it out of the cyclic
        # garbage collector's full passes, which otherwise stall the event loop for tens of ms.
        gc.freeze()
        # Requests make and drop many small objects that reference counting frees; collecting
        # the young generation every 700 allocations costs more than it finds.
        gc.set_threshold(50_000, 20, 100)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.load_poller.close()
        await self.limiter.drain()
        await self.usage.stop()
        await self.audit.stop()
        if self.globus is not None:
            self.globus.close()
        await self.relay.close()
        await self.bridge.aclose()
        if self.redis is not None:
            await self.redis.aclose()
        await self.db.close()
        if self.tracing is not None:  # last: the spans of the requests that finished go out first
            await asyncio.to_thread(self.tracing.shutdown)

    async def redis_ok(self) -> bool:
        if self.redis is None:
            return True
        try:
            return bool(await asyncio.wait_for(self.redis.ping(), timeout=2.0))
        except (aioredis.RedisError, OSError, TimeoutError):
            return False


def compute_relays(settings: Settings, bridge: StreamBridge) -> dict[str, Relay]:
    """A ComputeRelay for each cluster whose config says `relay: compute`."""
    relays: dict[str, Relay] = {}
    callback = settings.server.callback_url or f"http://{settings.server.host}:{settings.server.port}"
    for name, cluster in settings.clusters.items():
        if cluster.relay != "compute":
            continue
        c = cluster.compute
        transport: ComputeTransport
        if c.mode == "cloud":
            assert c.endpoint_id is not None  # ComputeSettings checks it
            transport = CloudTransport(c.endpoint_id, c.function_ids)
        else:
            transport = LocalTransport(LocalCompute(
                Path(c.run_dir) / name, provider=compute_provider(c), max_workers_per_node=c.max_workers,
            ))  # fmt: skip
        relays[name] = ComputeRelay(
            transport, bridge, callback, request_timeout_s=settings.relay.request_timeout_s,
            stream_idle_timeout_s=settings.relay.stream_idle_timeout_s,
        )  # fmt: skip
    return relays


def compute_provider(c: ComputeSettings) -> Any:
    """The Parsl provider that starts local-mode workers: on this host, or as a Slurm job."""
    from parsl.providers import LocalProvider, SlurmProvider

    if c.provider == "slurm":
        return SlurmProvider(
            partition=c.partition, nodes_per_block=1, init_blocks=1, min_blocks=1, max_blocks=1,
            walltime=c.walltime, worker_init=c.worker_init,
        )  # fmt: skip
    return LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1, worker_init=c.worker_init)  # type: ignore[no-untyped-call]


def upstream_sources(settings: Settings) -> list[UpstreamSource]:
    sources = []
    for cluster_name, cluster in settings.clusters.items():
        for i, up in enumerate(cluster.upstreams):
            upstream = Upstream(
                name=f"{cluster_name}/{up.name or i}",
                cluster=cluster_name,
                base_url=up.base_url,
                api_key=up.api_key.get_secret_value() if up.api_key else None,
            )
            sources.append(UpstreamSource(upstream, tuple(up.models) if up.models is not None else None))
    return sources


def model_rules(settings: Settings) -> dict[str, ModelRule]:
    return {
        name: ModelRule(
            clusters=frozenset(m.clusters) if m.clusters is not None else None,
            served_name=m.served_name,
        )
        for name, m in settings.models.items()
    }
