"""The hot-node scheduler: `plan`'s rules one by one, and `Scheduler.tick` acting on sites.

The sites here are `SiteDirectory` objects whose `last_status` the tests write, and whose relay
is a small recorder of start/stop calls: the real site functions are covered by the
integration tests.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, cast

import pytest
import redis.asyncio as aioredis

from gateway.config import ModelSettings, Settings
from gateway.metrics import GatewayMetrics
from gateway.relay.compute import ComputeRelay
from gateway.routing.demand import DemandBoard, GatewayDemand
from gateway.routing.leader import LeaderLease
from gateway.routing.scaling import Decision, ModelState, Target, plan
from gateway.routing.scheduler import Scheduler
from gateway.routing.sites import SiteDirectory

NOW = datetime(2024, 5, 15, 12, 0, tzinfo=UTC).timestamp()  # a Wednesday, noon UTC
SATURDAY = datetime(2024, 5, 18, 12, 0, tzinfo=UTC).timestamp()
REDIS_URL = "redis://127.0.0.1:6379/0"


class RecordingRelay:
    """Stands in for a ComputeRelay's worker calls: records them, answers like the site."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.fail = False
        self._n = 0

    async def start_worker(
        self, cluster: str, site_config: str | None, model: str, *, walltime: str | None = None
    ) -> dict[str, Any]:
        if self.fail:
            raise RuntimeError("the site is down")
        self._n += 1
        self.calls.append(("start", cluster, model, walltime))
        return {"worker_id": f"{cluster}-new{self._n}", "model": model, "state": "pending"}

    async def stop_worker(
        self, cluster: str, site_config: str | None, worker_id: str, *, drain: bool = True
    ) -> dict[str, Any]:
        if self.fail:
            raise RuntimeError("the site is down")
        self.calls.append(("stop", cluster, worker_id, drain))
        return {"worker_id": worker_id, "state": "draining"}


def site(
    cluster: str,
    workers: list[dict[str, Any]] | None = None,
    *,
    models: tuple[str, ...] = ("m",),
    free: int = 0,
    priority: int = 0,
    start_workers: bool = True,
    relay: RecordingRelay | None = None,
) -> SiteDirectory:
    d = SiteDirectory(
        cluster,
        cast(ComputeRelay, relay or RecordingRelay()),
        None,
        start_workers=start_workers,
        priority=priority,
    )
    d.last_status = {"models": list(models), "workers": workers or [], "free_nodes": free, "queued": 0}
    return d


def worker(
    worker_id: str, state: str = "ready", *, model: str = "m", ends_at: float | None = None, busy: int = 0
) -> dict[str, Any]:
    load = (
        {"running": busy, "waiting": 0, "kv_cache": 0.1, "generated_tokens": 0} if state == "ready" else None
    )
    return {
        "worker_id": worker_id,
        "model": model,
        "state": state,
        "job_id": "1",
        "ends_at": ends_at,
        "load": load,
    }


def model(demand: float = 0.0, *, surplus_since: float | None = None, **kw: Any) -> ModelState:
    settings = ModelSettings.model_validate({"max_replicas": 4, **kw})
    return ModelState("m", "m", settings, demand, surplus_since=surplus_since)


def decide(m: ModelState, sites: list[SiteDirectory], now: float = NOW, **kw: Any) -> list[Decision]:
    return plan([m], sites, now, renew_before_s=kw.pop("renew_before_s", 600), **kw).decisions


def summary(decisions: list[Decision]) -> list[tuple[str, str, str | None]]:
    return [(d.action, d.cluster, d.worker_id) for d in decisions]


# --- scale out -------------------------------------------------------------------------------


def test_scale_out_by_demand() -> None:
    a = site("a", [worker("w1")], free=4)
    decisions = decide(model(17.3, target_load=8), [a])
    assert summary(decisions) == [("start", "a", None), ("start", "a", None)]  # ceil(17.3 / 8) = 3
    assert decisions[0].reason == "demand 17.3 > 1 workers x target 8"
    assert decisions[0].kind == "demand"
    assert decisions[0].desired == 3


def test_scale_out_capped_at_max_replicas() -> None:
    result = plan(
        [model(100, target_load=8, max_replicas=3)],
        [site("a", free=9)],
        NOW,
        renew_before_s=600,
        max_starts=10,
    )
    assert [d.action for d in result.decisions] == ["start"] * 3
    assert result.targets["m"].desired == 3


def test_starts_per_tick_are_capped() -> None:
    decisions = decide(model(100, target_load=1, max_replicas=10), [site("a", free=9)])
    assert len(decisions) == 2
    assert len(decide(model(100, target_load=1, max_replicas=10), [site("a", free=9)], max_starts=5)) == 5


def test_workers_that_are_ending_or_ended_do_not_count() -> None:
    a = site(
        "a",
        [worker("w1", "draining"), worker("w2", "gone"), worker("w3", "failed"), worker("x", model="other")],
    )
    assert summary(decide(model(8, target_load=8), [a])) == [("start", "a", None)]
    for state in ("pending", "starting", "ready"):
        assert decide(model(8, target_load=8), [site("a", [worker("w1", state)])]) == []


def test_workers_started_but_not_yet_in_the_status_count() -> None:
    m = ModelState("m", "m", ModelSettings(max_replicas=4), 8.0, started={"a-new1": "a"})
    assert decide(m, [site("a")]) == []


def test_public_and_served_names() -> None:
    a = site("a", [worker("w1", model="org/Big-Model")], models=("org/Big-Model",))
    m = ModelState("big", "org/Big-Model", ModelSettings(max_replicas=3), 16.0)
    (d,) = decide(m, [a])
    assert (d.model, d.action, d.cluster) == ("big", "start", "a")
    assert decide(ModelState("big", "big", ModelSettings(max_replicas=3), 16.0), [a]) == []  # not listed


# --- min_hot ---------------------------------------------------------------------------------


def test_min_hot_per_cluster() -> None:
    decisions = decide(model(min_hot={"a": 1, "b": 2}), [site("a"), site("b")], max_starts=5)
    assert summary(decisions) == [("start", "a", None), ("start", "b", None), ("start", "b", None)]
    assert [d.reason for d in decisions] == ["min_hot a=1", "min_hot b=2", "min_hot b=2"]
    assert {d.kind for d in decisions} == {"min_hot"}


def test_min_hot_kept_on_its_own_cluster() -> None:
    # Enough workers in total, but all on b: a still gets its one.
    sites = [site("a"), site("b", [worker("w1"), worker("w2")], free=5)]
    assert summary(decide(model(min_hot={"a": 1}), sites)) == [("start", "a", None)]


def test_clusters_below_min_hot_come_first() -> None:
    sites = [site("a", free=0), site("b", free=8, priority=5)]
    decisions = decide(model(24, target_load=8, min_hot={"a": 1}), sites)
    assert summary(decisions) == [("start", "a", None), ("start", "b", None)]
    assert [d.kind for d in decisions] == ["min_hot", "demand"]


# --- pre-warm windows ------------------------------------------------------------------------


def test_prewarm_window_active_and_inactive() -> None:
    windows = [{"days": ["mon", "tue", "wed", "thu", "fri"], "start": "08:00", "end": "18:00", "replicas": 2}]
    decisions = decide(model(prewarm=windows), [site("a", free=3)])
    assert summary(decisions) == [("start", "a", None), ("start", "a", None)]
    assert decisions[0].reason == "prewarm window 08:00-18:00 mon-fri"
    assert decisions[0].kind == "prewarm"
    assert decide(model(prewarm=windows), [site("a", free=3)], now=SATURDAY) == []


@pytest.mark.parametrize(
    ("when", "active"),
    [
        (datetime(2024, 5, 18, 6, 30, tzinfo=UTC), True),  # Saturday 01:30 in Chicago
        (datetime(2024, 5, 18, 8, 0, tzinfo=UTC), False),  # Saturday 03:00 there
        (datetime(2024, 5, 18, 2, 30, tzinfo=UTC), False),  # Friday 21:30 there
    ],
)
def test_prewarm_window_past_midnight_in_its_time_zone(when: datetime, active: bool) -> None:
    windows = [{"days": ["fri"], "start": "22:00", "end": "02:00", "timezone": "America/Chicago"}]
    decisions = decide(model(prewarm=windows), [site("a")], now=when.timestamp())
    assert summary(decisions) == ([("start", "a", None)] if active else [])


def test_more_demand_than_the_window_asks_for() -> None:
    windows = [{"start": "00:00", "end": "24:00", "replicas": 1}]
    decisions = decide(model(20, target_load=8, prewarm=windows), [site("a", free=2)], max_starts=5)
    assert len(decisions) == 3
    assert decisions[0].kind == "demand"


# --- scale down ------------------------------------------------------------------------------


def test_no_demand_means_no_workers_after_idle() -> None:
    sites = [site("a", [worker("w1")])]
    result = plan([model(idle_s=900)], sites, NOW, renew_before_s=600)
    assert result.decisions == []
    assert result.targets["m"] == Target(desired=0, current=1, surplus=True)
    assert decide(model(idle_s=900, surplus_since=NOW - 899), sites) == []
    (d,) = decide(model(idle_s=900, surplus_since=NOW - 900), sites)
    assert (d.action, d.worker_id, d.kind) == ("drain", "w1", "idle")
    assert d.reason == "idle 900 s: 1 workers > 0 needed"


def test_scale_down_never_below_min_hot() -> None:
    sites = [site("a", [worker("a1"), worker("a2")]), site("b", [worker("b1")])]
    decisions = decide(model(min_hot={"a": 1}, idle_s=0, surplus_since=NOW - 1), sites)
    assert sorted(summary(decisions)) == [("drain", "a", "a1"), ("drain", "b", "b1")]
    only_hot = [site("a", [worker("a1")]), site("b")]
    assert decide(model(min_hot={"a": 1}, idle_s=0, surplus_since=NOW - 1), only_hot) == []


def test_drain_order_pending_first_then_starting_then_least_busy() -> None:
    workers = [worker("r-busy", busy=5), worker("r-idle"), worker("p", "pending"), worker("s", "starting")]
    decisions = decide(model(idle_s=0), [site("a", workers)])
    assert [d.worker_id for d in decisions] == ["p", "s", "r-idle", "r-busy"]


def test_drain_order_among_ready_least_load_then_soonest_end() -> None:
    workers = [
        worker("late", ends_at=NOW + 5000, busy=2),
        worker("soon", ends_at=NOW + 3000, busy=2),
        worker("busy", ends_at=NOW + 4000, busy=5),
    ]
    decisions = decide(model(8, target_load=8, idle_s=0), [site("a", workers)])
    assert [d.worker_id for d in decisions] == ["soon", "late"]


# --- walltime renewal ------------------------------------------------------------------------


def test_renewal_then_drain_of_the_old_when_the_new_is_ready() -> None:
    m = model(min_hot={"a": 1})
    (d,) = decide(m, [site("a", [worker("w1", ends_at=NOW + 420)], free=1)])
    assert (d.action, d.cluster, d.worker_id, d.kind) == ("renew", "a", "w1", "walltime")
    assert d.reason == "walltime ends in 420 s"
    # Far from its end: nothing to do.
    assert decide(m, [site("a", [worker("w1", ends_at=NOW + 601)])]) == []

    renewing = ModelState("m", "m", m.settings, 0.0, replacements={"w1": "w2"})
    waiting = [site("a", [worker("w1", ends_at=NOW + 300), worker("w2", "starting")])]
    assert decide(renewing, waiting) == []  # no second replacement, no scale-down
    ready = [site("a", [worker("w1", ends_at=NOW + 200), worker("w2", ends_at=NOW + 7200)])]
    (d,) = decide(renewing, ready)
    assert (d.action, d.cluster, d.worker_id, d.kind) == ("drain", "a", "w1", "replaced")
    assert d.reason == "replaced by w2"


def test_failed_replacement_is_renewed_again() -> None:
    renewing = ModelState("m", "m", ModelSettings(min_hot={"a": 1}), 0.0, replacements={"w1": "w2"})
    sites = [site("a", [worker("w1", ends_at=NOW + 300), worker("w2", "failed")])]
    assert summary(decide(renewing, sites)) == [("renew", "a", "w1")]


def test_renewal_elsewhere_when_its_cluster_cannot_start_it() -> None:
    m = model(16, target_load=8)
    sites = [site("a", [worker("w1", ends_at=NOW + 60), worker("w2")], models=()), site("b")]
    assert summary(decide(m, sites)) == [("renew", "b", "w1")]


def test_worker_not_needed_is_not_renewed() -> None:
    m = model(8, target_load=8)  # one worker needed, two run
    sites = [site("a", [worker("w1", ends_at=NOW + 60), worker("w2", ends_at=NOW + 9000)])]
    result = plan([m], sites, NOW, renew_before_s=600)
    assert result.decisions == []
    assert result.targets["m"] == Target(desired=1, current=2, surplus=True)


def test_renewals_count_against_the_starts_per_tick() -> None:
    workers = [worker(f"w{i}", ends_at=NOW + 100 + i) for i in range(3)]
    decisions = decide(model(40, target_load=8, max_replicas=5), [site("a", workers, free=5)])
    assert summary(decisions) == [("renew", "a", "w0"), ("renew", "a", "w1")]


# --- where ------------------------------------------------------------------------------------


def test_clusters_not_allowed_are_never_used() -> None:
    sites = [site("a", [worker("a1", "pending"), worker("a2")], free=8, priority=10), site("b")]
    m = model(16, target_load=8, clusters=["b"], idle_s=0, surplus_since=NOW - 1)
    decisions = decide(m, sites)
    assert summary(decisions) == [("start", "b", None), ("start", "b", None)]


def test_sites_that_may_not_start_workers_take_no_part() -> None:
    sites = [site("a", free=8, start_workers=False), site("b")]
    assert summary(decide(model(8), sites)) == [("start", "b", None)]
    unknown = site("c", free=8)
    unknown.last_status = None
    assert decide(model(8), [unknown]) == []


def test_cluster_choice_free_nodes_then_priority() -> None:
    assert summary(decide(model(8), [site("a", priority=10), site("b", free=2)])) == [("start", "b", None)]
    assert summary(decide(model(8), [site("a", free=1), site("b", free=1, priority=5)])) == [
        ("start", "b", None)
    ]
    # A second start counts the first: a's one free node is taken.
    two = decide(model(16), [site("a", free=1, priority=5), site("b", free=3)])
    assert summary(two) == [("start", "a", None), ("start", "b", None)]
    # So does a worker started before that the site's status does not show yet.
    started = ModelState("m", "m", ModelSettings(max_replicas=4), 16.0, started={"a-new1": "a"})
    assert summary(decide(started, [site("a", free=1, priority=5), site("b", free=3)])) == [
        ("start", "b", None)
    ]


# --- Scheduler.tick ---------------------------------------------------------------------------


def settings(**model_kw: Any) -> Settings:
    compute = {"relay": "compute", "compute": {"discover_workers": True, "start_workers": True}}
    return Settings(
        clusters={"a": compute, "b": compute},
        models={"pub": {"served_name": "m", "walltime": "01:00:00", **model_kw}},
        scheduler={"interval_s": 5, "renew_before_s": 600},
    )


class Refreshes:
    def __init__(self) -> None:
        self.count = 0

    async def __call__(self) -> None:
        self.count += 1


def scheduler(
    cfg: Settings,
    sites: list[SiteDirectory],
    *,
    in_flight: dict[tuple[str, str], int] | None = None,
    lease: LeaderLease | None = None,
    board: DemandBoard | None = None,
) -> tuple[Scheduler, GatewayMetrics, Refreshes]:
    metrics, refresh = GatewayMetrics(), Refreshes()
    demand = GatewayDemand(lambda: in_flight or {})
    s = Scheduler(
        cfg,
        sites,
        demand,
        board or DemandBoard(None, "r1", 30),
        lease or LeaderLease(None, "k", 30),
        metrics,
        refresh,
    )
    return s, metrics, refresh


def sample(metrics: GatewayMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def relay_of(d: SiteDirectory) -> RecordingRelay:
    return cast(RecordingRelay, d.relay)


async def test_leader_acts_logs_counts_and_refreshes(caplog: pytest.LogCaptureFixture) -> None:
    a = site("a")
    s, metrics, refresh = scheduler(settings(min_hot={"a": 1}), [a])
    with caplog.at_level(logging.INFO, logger="gateway.routing.scheduler"):
        taken = await s.tick(NOW)
    assert relay_of(a).calls == [("start", "a", "m", "01:00:00")]
    assert [(t.decision.action, t.worker_id) for t in taken] == [("start", "a-new1")]
    assert list(s.last_decisions) == taken
    (record,) = [r for r in caplog.records if r.getMessage() == "scheduler decision"]
    fields = vars(record)
    assert {k: fields[k] for k in ("model", "cluster", "action", "worker", "reason", "desired")} == {
        "model": "pub",
        "cluster": "a",
        "action": "start",
        "worker": "a-new1",
        "reason": "min_hot a=1",
        "desired": 1,
    }
    labels = {"model": "pub", "cluster": "a", "action": "start", "reason_kind": "min_hot"}
    assert sample(metrics, "hearth_scheduler_decisions_total", **labels) == 1
    assert sample(metrics, "hearth_scheduler_leader") == 1
    assert sample(metrics, "hearth_scheduler_desired_workers", model="pub") == 1
    assert refresh.count == 1
    # The site's status does not show the new worker yet: it is not started twice.
    assert await s.tick(NOW + 5) == []
    assert len(relay_of(a).calls) == 1
    assert refresh.count == 1


async def test_demand_and_engine_queues_drive_the_leader() -> None:
    a = site("a", [worker("w1") | {"load": {"running": 4, "waiting": 9}}], free=2)
    s, metrics, _ = scheduler(
        settings(max_replicas=4, target_load=8), [a], in_flight={("pub", "a/w1"): 4, ("other", "x"): 3}
    )
    await s.tick(NOW)
    assert sample(metrics, "hearth_scheduler_demand", model="pub") == 13  # in flight 4 + engine queue 9
    assert sample(metrics, "hearth_scheduler_desired_workers", model="pub") == 2
    assert relay_of(a).calls == [("start", "a", "m", "01:00:00")]


@pytest.fixture
async def redis_key() -> AsyncIterator[str]:
    prefix = f"hearth-test:{secrets.token_hex(6)}"
    yield prefix
    client = aioredis.Redis.from_url(REDIS_URL)
    keys = [k async for k in client.scan_iter(match=f"{prefix}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def test_only_the_leader_acts(redis_key: str) -> None:
    client = aioredis.Redis.from_url(REDIS_URL)
    cfg = settings(min_hot={"a": 1})
    sites = [site("a")]
    leases = [LeaderLease(client, f"{redis_key}:leader", 30) for _ in range(2)]
    boards = [DemandBoard(client, f"r{i}", 30, prefix=f"{redis_key}:demand") for i in range(2)]
    first, m1, _ = scheduler(cfg, sites, lease=leases[0], board=boards[0])
    second, m2, _ = scheduler(cfg, sites, lease=leases[1], board=boards[1])
    assert len(await first.tick(NOW)) == 1
    assert await second.tick(NOW) == []
    assert len(relay_of(sites[0]).calls) == 1
    assert sample(m1, "hearth_scheduler_leader") == 1
    assert sample(m2, "hearth_scheduler_leader") == 0
    # The leader goes away: the other takes over and decides afresh.
    await leases[0].release()
    sites[0].last_status = {"models": ["m"], "workers": [], "free_nodes": 0}  # its start failed
    assert [t.decision.action for t in await second.tick(NOW + 5)] == ["start"]
    assert await first.tick(NOW + 5) == []
    await client.aclose()


async def test_failed_site_call_is_retried_next_tick(caplog: pytest.LogCaptureFixture) -> None:
    a = site("a")
    relay_of(a).fail = True
    s, metrics, refresh = scheduler(settings(min_hot={"a": 1}), [a])
    with caplog.at_level(logging.WARNING, logger="gateway.routing.scheduler"):
        assert await s.tick(NOW) == []
    assert any(r.getMessage() == "scheduler decision failed" for r in caplog.records)
    assert refresh.count == 0
    assert (
        sample(
            metrics,
            "hearth_scheduler_decisions_total",
            model="pub",
            cluster="a",
            action="start",
            reason_kind="min_hot",
        )
        is None
    )
    relay_of(a).fail = False
    assert len(await s.tick(NOW + 5)) == 1


async def test_renewal_through_ticks() -> None:
    a = site("a", [worker("w1", ends_at=NOW + 300)], free=1)
    s, metrics, _ = scheduler(settings(min_hot={"a": 1}), [a])
    (renew,) = await s.tick(NOW)
    assert (renew.decision.action, renew.decision.worker_id, renew.worker_id) == ("renew", "w1", "a-new1")
    a.last_status = {
        "models": ["m"],
        "workers": [worker("w1", ends_at=NOW + 295), worker("a-new1", "starting")],
    }
    assert await s.tick(NOW + 5) == []
    a.last_status = {
        "models": ["m"],
        "workers": [worker("w1", ends_at=NOW + 290), worker("a-new1", ends_at=NOW + 3600)],
    }
    (drain,) = await s.tick(NOW + 10)
    assert (drain.decision.action, drain.worker_id, drain.decision.reason) == (
        "drain",
        "w1",
        "replaced by a-new1",
    )
    assert relay_of(a).calls == [("start", "a", "m", "01:00:00"), ("stop", "a", "w1", True)]
    labels = {"model": "pub", "cluster": "a"}
    assert (
        sample(metrics, "hearth_scheduler_decisions_total", action="renew", reason_kind="walltime", **labels)
        == 1
    )
    assert (
        sample(metrics, "hearth_scheduler_decisions_total", action="drain", reason_kind="replaced", **labels)
        == 1
    )
    # The status still shows the old one READY (not refreshed yet): it is not drained twice.
    assert await s.tick(NOW + 15) == []


async def test_idle_scale_down_through_ticks() -> None:
    a = site("a", [worker("w1")])
    s, _, _ = scheduler(settings(idle_s=60), [a])
    assert await s.tick(NOW) == []
    assert await s.tick(NOW + 30) == []
    (drain,) = await s.tick(NOW + 60)
    assert (drain.decision.action, drain.worker_id, drain.decision.kind) == ("drain", "w1", "idle")


async def test_models_on_no_scheduling_site_are_left_alone() -> None:
    sites = [site("a", models=("other",), workers=[worker("x", model="other")])]
    s, metrics, _ = scheduler(settings(min_hot={"a": 1}), sites)
    assert await s.tick(NOW) == []
    assert sample(metrics, "hearth_scheduler_desired_workers", model="pub") is None
    assert relay_of(sites[0]).calls == []
