"""What is where: per model and cluster, hot / starting / queued / cold / offline.

From the catalogue (the upstreams serving each model), the router (which failed recently, what
is in flight) and, for clusters that discover workers, what the site said at the last refresh
(workers starting or queued, models it can start), with the estimated wait of each model that
is not hot (`gateway.routing.startup`). GET /v1/status and `hearth models` show it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from gateway.routing.catalogue import Catalogue
from gateway.routing.router import Router
from gateway.routing.sites import SiteDirectory
from gateway.routing.startup import StartupClock


@dataclass
class ClusterState:
    cluster: str
    state: str  # hot | starting | queued | cold | offline
    ready: int = 0  # upstreams taking requests now
    starting: int = 0  # workers whose engine is loading
    queued: int = 0  # worker jobs waiting in the scheduler's queue
    in_flight: int = 0  # requests this replica has at its workers
    queue_depth: int = 0  # requests waiting in its engines' queues (all replicas'), from their metrics
    estimated_wait_s: float | None = None  # until a worker could answer; 0 when hot, None: unknown


def model_status(
    catalogue: Catalogue,
    router: Router,
    sites: Iterable[SiteDirectory],
    *,
    may_use: Callable[[str], bool] | None = None,
    may_use_cluster: Callable[[str], bool] | None = None,
    clock: StartupClock | None = None,
) -> list[dict[str, Any]]:
    """One entry per model the caller may use: the clusters they may use, each with state and counts."""
    table: dict[str, dict[str, ClusterState]] = {}
    for model, _ in catalogue.models():
        if may_use is not None and not may_use(model):
            continue
        for dep in catalogue.deployments(model):
            if may_use_cluster is not None and not may_use_cluster(dep.upstream.cluster):
                continue
            entry = table.setdefault(model, {}).setdefault(
                dep.upstream.cluster, ClusterState(dep.upstream.cluster, "offline")
            )
            name = dep.upstream.name
            entry.in_flight += router.in_flight(name)
            sample = router.board.fresh(name) if router.board is not None else None
            if sample is not None:
                entry.queue_depth += sample.load["waiting"]
            if not router.cooling(name):
                entry.ready += 1
    served_at: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}  # (model, cluster) -> site's view
    for site in sites:
        if may_use_cluster is not None and not may_use_cluster(site.cluster):
            continue
        status = site.last_status or {}
        for served in status.get("models", []):
            public = catalogue.public_name(str(served), site.cluster)
            if public is not None and (may_use is None or may_use(public)):
                table.setdefault(public, {}).setdefault(site.cluster, ClusterState(site.cluster, "cold"))
                served_at[(public, site.cluster)] = (str(served), status)
        for worker in status.get("workers", []):
            public = catalogue.public_name(str(worker.get("model")), site.cluster)
            found = table.get(public, {}).get(site.cluster) if public is not None else None
            if found is None:
                continue
            if worker.get("state") == "starting":
                found.starting += 1
            elif worker.get("state") == "pending":
                found.queued += 1
    out = []
    for model in sorted(table):
        clusters = []
        for entry in sorted(table[model].values(), key=lambda e: e.cluster):
            if entry.ready:
                entry.state = "hot"
                entry.estimated_wait_s = 0.0
            elif entry.starting:
                entry.state = "starting"
            elif entry.queued:
                entry.state = "queued"
            site_view = served_at.get((model, entry.cluster))
            if not entry.ready and clock is not None and site_view is not None:
                entry.estimated_wait_s = clock.estimate(entry.cluster, site_view[0], site_view[1])
            clusters.append(asdict(entry))
        out.append({"model": model, "clusters": clusters})
    return out
