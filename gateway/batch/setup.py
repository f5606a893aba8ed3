"""Build the batch runner from settings and the gateway's services."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path

from gateway.auth.principal import Principal
from gateway.batch.executor import BatchExecutor, BatchSpec
from gateway.batch.hot import HotExecutor
from gateway.batch.principals import load_principal
from gateway.batch.runner import BatchRunner
from gateway.config import Settings
from gateway.relay.clusters import ClusterRelays
from gateway.relay.compute import ComputeRelay
from gateway.relay.dispatch import Dispatcher
from gateway.routing.catalogue import Catalogue
from gateway.routing.sites import SiteDirectory
from gateway.store.batches import BatchStore
from gateway.store.files import FileStore
from gateway.store.models import Batch

__all__ = ["build_runner"]

log = logging.getLogger(__name__)


def build_runner(
    settings: Settings,
    store: BatchStore,
    files: FileStore,
    dispatcher: Dispatcher,
    catalogue: Catalogue,
    relays: ClusterRelays,
    sites: Sequence[SiteDirectory] = (),
) -> BatchRunner:
    b = settings.batch
    slots = asyncio.Semaphore(b.max_concurrent_lines)  # every batch on this replica together

    def batch_clusters(model: str) -> list[str]:
        """Clusters that can run `model` as a Slurm batch job: `batch_jobs` on, a compute
        relay, and the model served there, listed by its site, or assigned in `models`."""
        rule = settings.models.get(model)
        named = set(rule.clusters or ()) if rule is not None else set()
        listed = {d.cluster for d in sites if model in (d.last_status or {}).get("models", ())}
        serving = {dep.upstream.cluster for dep in catalogue.deployments(model)}
        return [
            name
            for name, cluster in settings.clusters.items()
            if cluster.batch_jobs
            and isinstance(relays.by_cluster.get(name), ComputeRelay)
            and name in (named | listed | serving)
        ]

    def slurm_cluster(principal: Principal, model: str) -> str | None:
        return next((c for c in batch_clusters(model) if principal.may_use_cluster(c)), None)

    def choose(batch: Batch, spec: BatchSpec) -> BatchExecutor:
        principal = load_principal(batch.principal)
        saved = spec.state.get("cluster")  # a batch that already went to Slurm stays there
        cluster: str | None = saved if isinstance(saved, str) else None
        # Large batches, and any batch for a model no worker serves now (cold), go to Slurm.
        if (
            cluster is None
            and not spec.state
            and (spec.total >= b.slurm_min_lines or not catalogue.deployments(spec.model))
        ):
            cluster = slurm_cluster(principal, spec.model)
        if cluster is not None:
            return _slurm(cluster, spec)
        return HotExecutor(dispatcher, principal, line_concurrency=b.line_concurrency, replica_slots=slots)

    def _slurm(cluster: str, spec: BatchSpec) -> BatchExecutor:
        from gateway.batch.slurm_executor import SlurmExecutor

        relay = relays.by_cluster[cluster]
        assert isinstance(relay, ComputeRelay)
        shared = settings.clusters[cluster].shared_dir
        log.info("batch %s: %d lines as a Slurm batch job on %s", spec.batch_id, spec.total, cluster)
        executor: BatchExecutor = SlurmExecutor(
            cluster,
            relay.transport,
            b,
            shared_dir=Path(shared) if shared else None,
            site_config=settings.clusters[cluster].compute.site_config,
            served_names={m: s.served_name for m, s in settings.models.items() if s.served_name},
        )
        return executor

    def model_refusal(batch: Batch, model: str) -> str | None:
        if not catalogue.deployments(model) and not batch_clusters(model):
            return f"The model `{model}` does not exist or you do not have access to it."
        return load_principal(batch.principal).refusal(model)

    return BatchRunner(store, files, b, choose_executor=choose, model_refusal=model_refusal)
