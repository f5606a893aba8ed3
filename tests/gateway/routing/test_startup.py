from __future__ import annotations

from typing import Any

from gateway.routing.startup import StartupClock


def status(*workers: dict[str, Any], free: int = 0) -> dict[str, Any]:
    return {"models": ["m"], "workers": list(workers), "free_nodes": free}


def w(worker_id: str, state: str, **extra: Any) -> dict[str, Any]:
    return {"worker_id": worker_id, "model": "m", "state": state, **extra}


def test_cold_with_a_free_node_is_the_default_load_time() -> None:
    clock = StartupClock(default_load_s=120)
    assert clock.estimate("a", "m", status(free=1), now=0) == 120


def test_cold_without_free_nodes_or_slurm_estimate_is_unknown() -> None:
    clock = StartupClock(default_load_s=120)
    assert clock.estimate("a", "m", status(free=0), now=0) is None
    assert clock.estimate("a", "m", status(w("w1", "pending"), free=0), now=0) is None


def test_queued_uses_slurms_expected_start() -> None:
    clock = StartupClock(default_load_s=60)
    assert clock.estimate("a", "m", status(w("w1", "pending", starts_at=1300.0)), now=1000) == 360


def test_hot_is_zero() -> None:
    clock = StartupClock(default_load_s=60)
    assert clock.estimate("a", "m", status(w("w1", "ready"), w("w2", "pending")), now=0) == 0


def test_learns_load_time_and_counts_down_while_loading() -> None:
    clock = StartupClock(default_load_s=100)
    clock.observe("a", status(w("w1", "pending")), now=0)
    clock.observe("a", status(w("w1", "starting")), now=10)
    clock.observe("a", status(w("w1", "ready")), now=40)  # loaded in 30 s
    assert clock.load_s("a", "m") == 30
    assert clock.load_s("b", "m") == 100  # learnt per cluster
    clock.observe("a", status(w("w2", "starting")), now=100)
    assert clock.estimate("a", "m", status(w("w2", "starting")), now=110) == 20
    # Past the average it says "a few seconds", never zero or negative: it is not READY yet.
    assert clock.estimate("a", "m", status(w("w2", "starting")), now=200) == 5


def test_moving_average_and_forgetting_gone_workers() -> None:
    clock = StartupClock(default_load_s=100)
    for i, load in enumerate((30.0, 60.0)):
        t = i * 1000.0
        clock.observe("a", status(w(f"w{i}", "starting")), now=t)
        clock.observe("a", status(w(f"w{i}", "ready")), now=t + load)
    assert clock.load_s("a", "m") == 30 + 0.3 * (60 - 30)
    clock.observe("a", status(), now=5000)
    assert clock._seen == {}
