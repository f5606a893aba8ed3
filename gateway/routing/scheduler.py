"""The hot-node scheduler: how many workers each model runs on the clusters that may start them.

One gateway replica decides (the holder of a `LeaderLease`); every replica publishes its own
demand to the `DemandBoard`. Each tick the leader sums the demand of all replicas and the
engines' own queues, averages it over time (`DemandAverage`), and `plan` turns that and the
sites' last status into decisions, which the scheduler then carries out through the sites'
`start_worker` and `stop_worker` functions.

The rules of `plan` are in :mod:`gateway.routing.scaling`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from gateway.config import ModelSettings, Settings
from gateway.metrics import GatewayMetrics
from gateway.routing.demand import DemandAverage, DemandBoard, DemandSource
from gateway.routing.leader import LeaderLease
from gateway.routing.scaling import COUNTED, MAX_STARTS_PER_TICK, Decision, ModelState, Plan, Taken, plan
from gateway.routing.sites import SiteDirectory

__all__ = ["Scheduler"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Recent:
    """A worker this leader started or asked to drain, until the sites' status shows it."""

    model: str
    cluster: str
    action: Literal["started", "draining"]
    at: float


class Scheduler:
    """Runs `plan` every `scheduler.interval_s` on the leader and carries its decisions out.

    Every replica publishes its demand each tick; only the leader reads the total, decides and
    acts. A failed site call is logged and the decision is made again next tick. State kept
    between ticks (the demand average, since when a model has had too many workers, which
    worker replaces which) is the leader's own and is dropped when it stops leading.
    """

    def __init__(
        self,
        settings: Settings,
        sites: Sequence[SiteDirectory],
        demand_source: DemandSource,
        board: DemandBoard,
        lease: LeaderLease,
        metrics: GatewayMetrics,
        catalogue_refresh: Callable[[], Awaitable[None]],
        *,
        history: int = 100,
        max_starts: int = MAX_STARTS_PER_TICK,
    ) -> None:
        self._settings = settings
        self._sites = [s for s in sites if s.start_workers]
        self._by_cluster = {s.cluster: s for s in self._sites}
        self._demand = demand_source
        self._board = board
        self._lease = lease
        self._metrics = metrics
        self._refresh = catalogue_refresh
        self._max_starts = max_starts
        self._average = DemandAverage(settings.scheduler.demand_halflife_s)
        self._surplus_since: dict[str, float] = {}
        self._replacements: dict[str, dict[str, str]] = {}  # model -> old worker -> replacement
        self._recent: dict[str, _Recent] = {}  # worker id -> what we did to it
        self._leading = False
        # Long enough for a status refresh or two to show what we did.
        self._grace_s = max(6 * settings.scheduler.interval_s, 120.0)
        self.last_decisions: deque[Taken] = deque(maxlen=history)

    async def run(self) -> None:
        """Tick every `scheduler.interval_s` until cancelled; then give the lease up."""
        if not self._settings.scheduler.enabled or not self._sites:
            return
        try:
            while True:
                try:
                    await self.tick(time.time())
                except Exception:
                    log.exception("scheduler tick failed")
                await asyncio.sleep(self._settings.scheduler.interval_s)
        finally:
            await self._lease.release()
            self._metrics.scheduler_leader.set(0)

    async def tick(self, now: float) -> list[Taken]:
        """Publish this replica's demand; if it leads, decide and act. The decisions carried out."""
        await self._board.publish(self._demand.current())
        leading = await self._lease.hold()
        self._metrics.scheduler_leader.set(1 if leading else 0)
        if not leading:
            if self._leading:
                self._forget()
            return []
        self._leading = True
        models = self._models()
        averages = self._average.update(self._engine_waiting(await self._board.total(), models), now)
        self._prune(now)
        states = [
            ModelState(
                name,
                served,
                ms,
                averages.get(name, 0.0),
                self._surplus_since.get(name),
                dict(self._replacements.get(name, {})),
                {w: r.cluster for w, r in self._recent.items() if r.model == name and r.action == "started"},
                frozenset(w for w, r in self._recent.items() if r.model == name and r.action == "draining"),
            )
            for name, (served, ms) in models.items()
        ]
        result = plan(
            states, self._sites, now, renew_before_s=self._settings.scheduler.renew_before_s,
            max_starts=self._max_starts,
        )  # fmt: skip
        self._observe(result, averages, now)
        served_of = {name: served for name, (served, _) in models.items()}
        taken: list[Taken] = []
        for decision in result.decisions:
            if not self._lease.is_leader:
                break  # the lease ran out while acting: the next leader decides afresh
            done = await self._act(decision, served_of[decision.model], models[decision.model][1], now)
            if done is not None:
                taken.append(done)
        if taken:
            try:
                await self._refresh()
            except Exception:
                log.exception("scheduler: catalogue refresh failed")
        return taken

    def _models(self) -> dict[str, tuple[str, ModelSettings]]:
        """The models to schedule, public name -> (served name, settings): the configured ones
        (with a site that may run them), or, when the config names none, every model a site
        lists or runs, with default settings."""
        configured = self._settings.models
        if configured:
            candidates = {name: (ms.served_name or name, ms) for name, ms in configured.items()}
        else:
            candidates = {served: (served, ModelSettings()) for served in self._served_at_sites()}
        return {
            name: (served, ms)
            for name, (served, ms) in candidates.items()
            if any(
                (ms.clusters is None or site.cluster in ms.clusters) and served in _served_at(site)
                for site in self._sites
            )
        }

    def _served_at_sites(self) -> set[str]:
        return {m for site in self._sites for m in _served_at(site)}

    def _engine_waiting(
        self, total: Mapping[str, float], models: Mapping[str, tuple[str, ModelSettings]]
    ) -> dict[str, float]:
        """The replicas' demand plus the requests queued in READY engines (reaching them other
        ways too); in-flight requests of the gateway are counted once, by the replicas."""
        public_of = {served: name for name, (served, _) in models.items()}
        out = dict(total)
        for site in self._sites:
            for w in (site.last_status or {}).get("workers", []):
                name = public_of.get(str(w.get("model")))
                load = w.get("load") or {}
                if name is not None and w.get("state") == "ready" and load.get("waiting"):
                    out[name] = out.get(name, 0.0) + float(load["waiting"])
        return out

    def _prune(self, now: float) -> None:
        """Forget what the sites' status now shows, or what it never showed in time."""
        states = {
            str(w.get("worker_id")): str(w.get("state"))
            for site in self._sites
            for w in (site.last_status or {}).get("workers", [])
        }
        for worker_id, recent in list(self._recent.items()):
            state = states.get(worker_id)
            shown = state is not None if recent.action == "started" else state not in COUNTED
            if shown or now - recent.at > self._grace_s:
                del self._recent[worker_id]
        for pairs in self._replacements.values():
            for old, new in list(pairs.items()):
                new_state = states.get(new, "pending" if new in self._recent else "gone")
                if states.get(old) not in COUNTED or new_state not in COUNTED:
                    del pairs[old]  # the old one ended, or the replacement failed: renew afresh

    def _observe(self, result: Plan, averages: Mapping[str, float], now: float) -> None:
        for model, target in result.targets.items():
            if target.surplus:
                self._surplus_since.setdefault(model, now)
            else:
                self._surplus_since.pop(model, None)
            # Not memoised with `child`: these series are cleared when leadership moves.
            self._metrics.scheduler_desired.labels(model).set(target.desired)
            self._metrics.scheduler_demand.labels(model).set(averages.get(model, 0.0))

    async def _act(self, d: Decision, served: str, settings: ModelSettings, now: float) -> Taken | None:
        site = self._by_cluster[d.cluster]
        fields: dict[str, Any] = {
            "model": d.model, "cluster": d.cluster, "action": d.action, "reason": d.reason,
            "reason_kind": d.kind, "desired": d.desired,
        }  # fmt: skip
        try:
            if d.action == "drain":
                assert d.worker_id is not None
                await site.relay.stop_worker(site.cluster, site.site_config, d.worker_id, drain=True)
                worker_id = d.worker_id
                self._recent[worker_id] = _Recent(d.model, d.cluster, "draining", now)
                self._replacements.get(d.model, {}).pop(worker_id, None)
            else:
                view = await site.relay.start_worker(
                    site.cluster, site.site_config, served, walltime=settings.walltime
                )
                worker_id = str(view["worker_id"])
                self._recent[worker_id] = _Recent(d.model, d.cluster, "started", now)
                if d.action == "renew" and d.worker_id is not None:
                    self._replacements.setdefault(d.model, {})[d.worker_id] = worker_id
                    fields["replaces"] = d.worker_id
        except Exception as exc:
            log.warning(
                "scheduler decision failed",
                extra={**fields, "worker": d.worker_id, "error": str(exc) or type(exc).__name__},
            )
            return None
        log.info("scheduler decision", extra={**fields, "worker": worker_id})
        self._metrics.child(self._metrics.scheduler_decisions, d.model, d.cluster, d.action, d.kind).inc()
        taken = Taken(now, d, worker_id)
        self.last_decisions.append(taken)
        return taken

    def _forget(self) -> None:
        """Another replica leads now: what this one knew is stale by the time it leads again."""
        self._leading = False
        self._average.reset()
        self._surplus_since.clear()
        self._replacements.clear()
        self._recent.clear()
        self._metrics.scheduler_desired.clear()
        self._metrics.scheduler_demand.clear()


def _served_at(site: SiteDirectory) -> Iterable[str]:
    """The models a site lists or runs workers of."""
    status = site.last_status or {}
    yield from (str(m) for m in status.get("models", ()))
    yield from (str(w.get("model")) for w in status.get("workers", []))
