"""model_status: the states, counts, queue depth and estimated wait GET /v1/status shows."""

from __future__ import annotations

from typing import Any, cast

from gateway.relay.base import Upstream
from gateway.relay.compute import ComputeRelay
from gateway.relay.direct import DirectRelay
from gateway.routing.catalogue import Catalogue, ModelRule, UpstreamSource
from gateway.routing.load import LoadBoard
from gateway.routing.router import Router
from gateway.routing.sites import SiteDirectory
from gateway.routing.startup import StartupClock
from gateway.routing.status import model_status


def site(cluster: str, status: dict[str, Any]) -> SiteDirectory:
    directory = SiteDirectory(cluster, cast(ComputeRelay, None), start_workers=True)
    directory.last_status = status
    return directory


def table(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(m["model"], c["cluster"]): c for m in rows for c in m["clusters"]}


async def test_states_queue_depth_and_estimated_wait() -> None:
    board = LoadBoard(stale_after_s=60)
    hot = UpstreamSource(Upstream("a/w1", "a", "http://127.0.0.1:9/v1"), ("engine-name",))
    sites = [
        site("b", {
            "models": ["engine-name", "other"], "free_nodes": 1,
            "workers": [{"worker_id": "w2", "model": "engine-name", "state": "pending", "starts_at": None}],
        }),
        site("a", {"models": ["engine-name"], "free_nodes": 0, "workers": []}),
    ]  # fmt: skip
    relay = DirectRelay()
    rules = {"public": ModelRule(served_name="engine-name"), "other": ModelRule(clusters=frozenset({"a"}))}
    catalogue = Catalogue([hot], relay, rules, sites)
    router = Router(catalogue, board=board)
    board.update("a/w1", {"running": 2, "waiting": 3, "kv_cache": 0.5, "generated_tokens": 10.0})
    clock = StartupClock(default_load_s=90)
    try:
        rows = table(model_status(catalogue, router, sites, clock=clock))
    finally:
        await relay.close()
    # Public names, not the engine's; `other` is offered only on cluster a, which does not list it.
    assert set(rows) == {("public", "a"), ("public", "b")}
    a, b = rows[("public", "a")], rows[("public", "b")]
    assert (a["state"], a["ready"], a["queue_depth"], a["estimated_wait_s"]) == ("hot", 1, 3, 0.0)
    # Queued with a free node and no start time from Slurm: the job should start now, then load.
    assert (b["state"], b["queued"], b["queue_depth"], b["estimated_wait_s"]) == ("queued", 1, 0, 90.0)


async def test_cold_without_room_has_no_estimate() -> None:
    sites = [site("a", {"models": ["m"], "free_nodes": 0, "workers": []})]
    relay = DirectRelay()
    catalogue = Catalogue([], relay, None, sites)
    try:
        rows = table(model_status(catalogue, Router(catalogue), sites, clock=StartupClock(60)))
    finally:
        await relay.close()
    assert rows[("m", "a")]["state"] == "cold"
    assert rows[("m", "a")]["estimated_wait_s"] is None
    assert [m for m, _ in catalogue.models()] == ["m"]  # a cold model is listed
    assert catalogue.deployments("m") == ()
    assert catalogue.startable("m") == frozenset({"a"})
