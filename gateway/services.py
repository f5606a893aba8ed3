"""The long-lived parts of one gateway process, built from settings and held on app.state."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import logging
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from gateway.auth.authenticator import Authenticator
from gateway.auth.principal import Principal
from gateway.config import Settings
from gateway.metrics import GatewayMetrics
from gateway.relay.base import Upstream
from gateway.relay.direct import DirectRelay
from gateway.relay.dispatch import Dispatcher
from gateway.routing.catalogue import Catalogue, ModelRule, UpstreamSource
from gateway.routing.router import Router
from gateway.store.database import Database
from gateway.store.keys import KeyStore
from gateway.store.usage import UsageRecorder

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    db: Database
    keys: KeyStore
    usage: UsageRecorder
    relay: DirectRelay
    catalogue: Catalogue
    router: Router
    dispatcher: Dispatcher
    auth: Authenticator
    metrics: GatewayMetrics
    redis: aioredis.Redis | None
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
        relay = DirectRelay(
            connect_timeout_s=r.connect_timeout_s,
            request_timeout_s=r.request_timeout_s,
            stream_idle_timeout_s=r.stream_idle_timeout_s,
            max_connections=r.max_connections,
        )
        catalogue = Catalogue(upstream_sources(settings), relay, model_rules(settings))
        router = Router(catalogue, cooldown_s=r.failure_cooldown_s)
        dispatcher = Dispatcher(router, relay, metrics, usage, max_attempts=r.max_attempts)
        auth = Authenticator(
            keys,
            static_principals(settings),
            cache_ttl_s=settings.auth.key_cache_ttl_s,
            negative_ttl_s=settings.auth.negative_cache_ttl_s,
        )
        client = aioredis.Redis.from_url(settings.redis.url) if settings.redis.url else None
        return cls(settings, db, keys, usage, relay, catalogue, router, dispatcher, auth, metrics, client)

    async def start(self) -> None:
        if self.settings.store.migrate_on_start:
            await self.db.migrate()
        await self.usage.start()
        await self.catalogue.refresh()
        self._tasks.append(
            asyncio.create_task(
                self.catalogue.run_discovery(self.settings.relay.discovery_interval_s),
                name="hearth-model-discovery",
            )
        )
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
        await self.usage.stop()
        await self.relay.close()
        if self.redis is not None:
            await self.redis.aclose()
        await self.db.close()

    async def redis_ok(self) -> bool:
        if self.redis is None:
            return True
        try:
            return bool(await asyncio.wait_for(self.redis.ping(), timeout=2.0))
        except (aioredis.RedisError, OSError, TimeoutError):
            return False


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


def static_principals(settings: Settings) -> dict[str, Principal]:
    out = {}
    for k in settings.auth.api_keys:
        if k.sha256 is not None:
            digest = k.sha256
        else:
            assert k.key is not None  # StaticKey guarantees one of the two
            digest = hashlib.sha256(k.key.get_secret_value().encode()).hexdigest()
        models = frozenset(k.models) if k.models is not None else None
        out[digest] = Principal(user=k.owner, is_admin=k.admin, models=models)
    return out
