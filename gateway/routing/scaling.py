"""Scaling decisions: how many workers each model should run, and where (a pure function).

`plan` turns each model's demand and settings and the sites' last status into decisions; the
`Scheduler` (:mod:`gateway.routing.scheduler`) carries them out on the leader. The rules, for
each model:

* desired workers = the most of ceil(demand / target_load), the sum of its min_hot and the
  active pre-warm windows' replicas, capped at max_replicas; no demand, no min_hot and no
  window means 0, so a worker started cold is drained once it has been idle;
* workers that count are PENDING, STARTING and READY ones on the clusters the model may use;
* a cluster below its min_hot gets workers there first; further workers go to the best
  cluster by `rank_sites` (free nodes, then priority, then shortest queue);
* more workers than desired are drained only once that has held for idle_s, never below a
  cluster's min_hot, not-READY ones first, then the least loaded and soonest to end;
* a READY worker still needed whose walltime ends within `renew_before_s` gets a replacement
  (on its own cluster if it can), and is drained once the replacement is READY;
* at most `max_starts` workers are started per model per tick, so a burst is no job storm.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from gateway.config import ModelSettings
from gateway.routing.placement import rank_sites
from gateway.routing.prewarm import active_windows, describe_window, prewarm_replicas
from gateway.routing.sites import SiteDirectory

__all__ = ["COUNTED", "MAX_STARTS_PER_TICK", "Decision", "ModelState", "Plan", "Taken", "Target", "plan"]

log = logging.getLogger(__name__)

Action = Literal["start", "drain", "renew"]
ReasonKind = Literal["demand", "min_hot", "prewarm", "idle", "walltime", "replaced"]

COUNTED = ("pending", "starting", "ready")
MAX_STARTS_PER_TICK = 2
_STATE_ORDER = {"pending": 0, "starting": 1, "ready": 2}


@dataclass(frozen=True, slots=True)
class Decision:
    """One thing to do. `worker_id`: the worker to drain, or the one a renewal replaces."""

    action: Action
    model: str
    cluster: str
    worker_id: str | None
    reason: str
    desired: int
    kind: ReasonKind


@dataclass(frozen=True, slots=True)
class ModelState:
    """What `plan` knows of one model besides the sites' status."""

    name: str  # public name
    served: str  # the sites' name for it
    settings: ModelSettings
    demand: float  # moving average of requests in flight and waiting
    surplus_since: float | None = None  # since when it has had more workers than desired
    replacements: Mapping[str, str] = field(default_factory=dict)  # old worker id -> replacement
    started: Mapping[str, str] = field(default_factory=dict)  # worker id -> cluster, maybe not in status yet
    draining: frozenset[str] = frozenset()  # asked to drain, maybe not so in status yet


@dataclass(frozen=True, slots=True)
class Target:
    desired: int
    current: int
    surplus: bool  # more workers than desired (after the starts min_hot asks for)


@dataclass(frozen=True, slots=True)
class Plan:
    decisions: list[Decision]
    targets: dict[str, Target]


@dataclass(frozen=True, slots=True)
class Taken:
    """A decision carried out: when, and the worker it started or stopped."""

    at: float
    decision: Decision
    worker_id: str


@dataclass(frozen=True, slots=True)
class _Worker:
    worker_id: str
    cluster: str
    state: str
    ends_at: float | None
    busy: float  # running + waiting requests
    seen: bool = True  # False: started by us, not in the site's status yet


def plan(
    models: Sequence[ModelState],
    sites: Sequence[SiteDirectory],
    now: float,
    *,
    renew_before_s: float,
    max_starts: int = MAX_STARTS_PER_TICK,
) -> Plan:
    """The decisions for `models` at `now` (unix seconds), from the sites' `last_status`.

    Pure: it reads its arguments and changes nothing. Only sites with `start_workers` and a
    status take part, each model only on the clusters it allows.
    """
    decisions: list[Decision] = []
    targets: dict[str, Target] = {}
    for model in models:
        found, target = _plan_model(model, sites, now, renew_before_s, max_starts)
        decisions.extend(found)
        targets[model.name] = target
    return Plan(decisions, targets)


def _plan_model(
    m: ModelState, sites: Sequence[SiteDirectory], now: float, renew_before_s: float, max_starts: int
) -> tuple[list[Decision], Target]:
    s = m.settings
    allowed = [
        x
        for x in sites
        if x.start_workers and x.last_status is not None and (s.clusters is None or x.cluster in s.clusters)
    ]
    startable = [x for x in allowed if m.served in (x.last_status or {}).get("models", ())]
    workers = _workers(m, allowed)
    by_id = {w.worker_id: w for w in workers}
    live = {old: new for old, new in m.replacements.items() if old in by_id and new in by_id}
    effective = [w for w in workers if w.worker_id not in live]
    current = len(effective)
    counts = Counter(w.cluster for w in effective)
    desired, kind, why = _desired(m, now, current)
    decisions: list[Decision] = []

    def emit(action: Action, cluster: str, worker: str | None, reason: str, kind: ReasonKind) -> None:
        decisions.append(Decision(action, m.name, cluster, worker, reason, desired, kind))

    for old, new in sorted(live.items()):
        if by_id[new].state == "ready":
            emit("drain", by_id[old].cluster, old, f"replaced by {new}", "replaced")

    # Workers not in the sites' status yet weigh on the choice of cluster like planned ones.
    planned = Counter(w.cluster for w in workers if not w.seen)
    added: Counter[str] = Counter()  # starts that add a worker (not replacements)
    starts_left = max_starts
    can_start = {x.cluster for x in startable}
    for cluster, floor in sorted(s.min_hot.items()):
        need = min(floor - counts[cluster], starts_left) if cluster in can_start else 0
        for _ in range(max(need, 0)):
            emit("start", cluster, None, f"min_hot {cluster}={floor}", "min_hot")
            planned[cluster] += 1
            added[cluster] += 1
            starts_left -= 1

    expiring = sorted(
        (
            w
            for w in effective
            if w.state == "ready" and w.ends_at is not None and w.ends_at - now < renew_before_s
        ),
        key=lambda w: (w.ends_at, w.worker_id),
    )
    keep_total = current + added.total() - len(expiring)
    keep = counts + added
    keep.subtract(w.cluster for w in expiring)
    renewed: set[str] = set()
    for w in expiring:
        if starts_left <= 0:
            break
        if keep_total >= desired and keep[w.cluster] >= s.min_hot.get(w.cluster, 0):
            continue  # not needed: it may end
        where = w.cluster if w.cluster in can_start else _best(m.served, startable, planned)
        if where is None:
            continue
        assert w.ends_at is not None
        emit("renew", where, w.worker_id, f"walltime ends in {max(w.ends_at - now, 0):.0f} s", "walltime")
        planned[where] += 1
        keep[where] += 1
        keep_total += 1
        starts_left -= 1
        renewed.add(w.worker_id)

    for _ in range(min(desired - current - added.total(), starts_left)):
        where = _best(m.served, startable, planned)
        if where is None:
            break
        emit("start", where, None, why, kind)
        planned[where] += 1
        added[where] += 1

    total = current + added.total()
    surplus = total > desired
    since = m.surplus_since if m.surplus_since is not None else now
    if surplus and now - since >= s.idle_s:
        excess = total - desired
        remaining = counts + added
        for w in sorted((w for w in effective if w.worker_id not in renewed), key=_drain_order):
            if excess <= 0:
                break
            if remaining[w.cluster] <= s.min_hot.get(w.cluster, 0):
                continue
            emit(
                "drain",
                w.cluster,
                w.worker_id,
                f"idle {now - since:.0f} s: {total} workers > {desired} needed",
                "idle",
            )
            remaining[w.cluster] -= 1
            excess -= 1
    return decisions, Target(desired, current, surplus)


def _desired(m: ModelState, now: float, current: int) -> tuple[int, ReasonKind, str]:
    """Desired workers, what sets it (for starts beyond min_hot), and that as a sentence."""
    s = m.settings
    by_demand = math.ceil(m.demand / s.target_load - 1e-9) if m.demand > 0 else 0
    min_hot = sum(s.min_hot.values())
    moment = datetime.fromtimestamp(now, UTC)
    prewarm = prewarm_replicas(s.prewarm, moment)
    desired = min(max(by_demand, min_hot, prewarm), s.max_replicas)
    if by_demand > 0 and by_demand >= max(min_hot, prewarm):
        return desired, "demand", f"demand {m.demand:.1f} > {current} workers x target {s.target_load:g}"
    if prewarm > 0 and prewarm >= min_hot:
        window = max(active_windows(s.prewarm, moment), key=lambda w: w.replicas)
        return desired, "prewarm", f"prewarm window {describe_window(window)}"
    hot = ", ".join(f"{c}={n}" for c, n in sorted(s.min_hot.items()) if n)
    return desired, "min_hot", f"min_hot {hot}"


def _workers(m: ModelState, sites: Sequence[SiteDirectory]) -> list[_Worker]:
    """The model's workers that count, with the ones started but not yet in a status."""
    out: list[_Worker] = []
    seen: set[str] = set()
    for site in sites:
        for w in (site.last_status or {}).get("workers", []):
            worker_id = str(w.get("worker_id"))
            seen.add(worker_id)
            state = w.get("state")
            if w.get("model") != m.served or state not in COUNTED or worker_id in m.draining:
                continue
            load = w.get("load") or {}
            busy = float(load.get("running") or 0) + float(load.get("waiting") or 0)
            ends = w.get("ends_at")
            out.append(
                _Worker(worker_id, site.cluster, str(state), float(ends) if ends is not None else None, busy)
            )
    clusters = {site.cluster for site in sites}
    for worker_id, cluster in sorted(m.started.items()):
        if worker_id not in seen and worker_id not in m.draining and cluster in clusters:
            out.append(_Worker(worker_id, cluster, "pending", None, 0.0, seen=False))
    return out


def _drain_order(w: _Worker) -> tuple[int, float, float, str]:
    """Queued jobs first, then loading ones, then the least busy and soonest to end."""
    ends = w.ends_at if w.ends_at is not None else math.inf
    return (_STATE_ORDER.get(w.state, 0), w.busy, ends, w.worker_id)


def _best(served: str, sites: Sequence[SiteDirectory], planned: Mapping[str, int]) -> str | None:
    """The best cluster for one more worker, counting the ones already planned there as
    queued jobs on nodes that are no longer free."""
    views = [_with_planned(site, served, planned.get(site.cluster, 0)) for site in sites]
    ranked = rank_sites(served, views, join_pending=False)
    return ranked[0].cluster if ranked else None


def _with_planned(site: SiteDirectory, served: str, n: int) -> SiteDirectory:
    if n <= 0:
        return site
    status: dict[str, Any] = dict(site.last_status or {})
    status["free_nodes"] = int(status.get("free_nodes") or 0) - n
    planned = [{"worker_id": f"(planned {i})", "model": served, "state": "pending"} for i in range(n)]
    status["workers"] = [*status.get("workers", []), *planned]
    view = SiteDirectory(
        site.cluster, site.relay, site.site_config, start_workers=True, priority=site.priority
    )
    view.last_status = status
    return view
