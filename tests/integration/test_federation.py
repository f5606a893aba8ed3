"""Federation across two real Slurm clusters: routing, pinning, cold starts, losing a worker or a
whole controller, and the hot-node scheduler (min_hot, scale-out and idle scale-down, walltime
renewal, one leader among replicas).

One gateway serves both clusters through Globus Compute's engine (local mode), each cluster's
site functions starting sim-engine workers as Slurm jobs. The tests share that gateway and run
in file order: each leaves the clusters as the next expects.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.gateway import Gateway, start_gateway
from tests.support.redis_server import RedisServer
from tests.support.slurm import SlurmCluster

pytestmark = pytest.mark.timeout(900)

A, B = "hearth-a", "hearth-b"
SIM = {"engine": "sim", "sim_ttft_ms": 1, "sim_itl_ms": 20, "walltime": "00:30:00"}
SITE_MODELS = ("fed-hot", "fed-cold", "fed-scale", "fed-renew", "fed-lead")


def write_site(slurm: SlurmCluster, root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "site.yaml"
    path.write_text(yaml.safe_dump({
        "cluster": slurm.name, "state_dir": str(root / "state"), "slurm_conf": str(slurm.conf_path),
        "partition": slurm.partition, "python": sys.executable, "drain_seconds": 3,
        "models": {m: SIM for m in SITE_MODELS},
    }))  # fmt: skip
    return path


def cluster_config(site: Path, run_dir: Path, priority: int) -> dict[str, Any]:
    return {
        "relay": "compute",
        "priority": priority,
        "compute": {"mode": "local", "provider": "local", "run_dir": str(run_dir),
                    "discover_workers": True, "start_workers": True, "site_config": str(site)},
    }  # fmt: skip


@dataclass
class Federation:
    gw: Gateway
    clusters: dict[str, SlurmCluster]
    sites: dict[str, Path] = field(default_factory=dict)


@pytest.fixture(scope="module")
def fed(
    slurm_clusters: tuple[SlurmCluster, SlurmCluster], logs: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Federation]:
    a, b = slurm_clusters
    for cluster in (a, b):  # a clean slate: earlier tests' workers would take the nodes' CPUs
        cancel_all(cluster)
    root = tmp_path_factory.mktemp("fed")
    sites = {A: write_site(a, root / "site-a"), B: write_site(b, root / "site-b")}
    clusters = {
        A: cluster_config(sites[A], root / "engine-a", priority=0),
        B: cluster_config(sites[B], root / "engine-b", priority=5),
    }
    models = {
        "fed-hot": {"min_hot": {A: 1, B: 1}, "max_replicas": 2},
        "fed-cold": {},
        "fed-scale": {"min_hot": {A: 1}, "max_replicas": 2, "target_load": 2, "idle_s": 4},
        "fed-renew": {"min_hot": {A: 1}, "clusters": [A], "walltime": "00:02:00"},
    }
    gw = start_gateway(
        logs, clusters=clusters, models=models, store_url=f"sqlite:///{root}/gw.db",
        relay={"discovery_interval_s": 1, "cold_start_wait_s": 120, "keepalive_s": 1,
               "failure_cooldown_s": 2},
        scheduler={"interval_s": 1, "demand_halflife_s": 2, "renew_before_s": 100},
    )  # fmt: skip
    try:
        yield Federation(gw, {A: a, B: b}, sites)
    finally:
        gw.stop()
        for cluster in (a, b):
            cluster.start_controller()
            cancel_all(cluster)


def cancel_all(cluster: SlurmCluster) -> None:
    subprocess.run(["scancel", "--quiet", "--user=root"], env=cluster.env, check=False)
    deadline = time.monotonic() + 30
    while (
        time.monotonic() < deadline
        and subprocess.run(
            ["squeue", "--noheader", "--format=%i"], env=cluster.env, capture_output=True, text=True
        ).stdout.strip()
    ):
        time.sleep(0.2)


# -- what the gateway says ---------------------------------------------------------------------


def status(gw: Gateway) -> dict[str, dict[str, dict[str, Any]]]:
    """/v1/status as {model: {cluster: entry}}."""
    body = httpx.get(f"{gw.url}/status", headers={"Authorization": f"Bearer {gw.api_key}"}, timeout=30).json()
    return {m["model"]: {c["cluster"]: c for c in m["clusters"]} for m in body["models"]}


def ready(gw: Gateway, model: str) -> dict[str, int]:
    return {cluster: entry["ready"] for cluster, entry in status(gw).get(model, {}).items()}


def wait_until(what: str, predicate: Callable[[], bool], timeout: float, gw: Gateway | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            seen = status(gw) if gw is not None else None
            raise AssertionError(f"timed out waiting for {what}; status: {seen}")
        time.sleep(0.5)


def metric(gw: Gateway, name: str, **labels: str) -> float:
    """The sum of every series of `name` whose labels include `labels`."""
    text = httpx.get(f"{gw.root}/metrics", timeout=30).text
    total = 0.0
    for m in re.finditer(rf"^{re.escape(name)}(?:{{([^}}]*)}})? (\S+)$", text, re.M):
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
    return total


def served(gw: Gateway, model: str, cluster: str) -> float:
    return metric(gw, "hearth_requests_total", model=model, cluster=cluster, status="200")


def jobs(cluster: SlurmCluster, model: str) -> list[tuple[str, str]]:
    """(job id, state) of the worker jobs for `model` on `cluster`."""
    out = subprocess.run(
        ["squeue", "--noheader", "--format=%i %j %T"], env=cluster.env, capture_output=True, text=True
    ).stdout
    return [(f[0], f[2]) for f in (line.split() for line in out.splitlines()) if f"-{model}-" in f[1]]


def complete(gw: Gateway, model: str, max_tokens: int = 4) -> int:
    r = httpx.post(
        f"{gw.url}/completions",
        json={"model": model, "prompt": "hello", "max_tokens": max_tokens},
        headers={"Authorization": f"Bearer {gw.api_key}"},
        timeout=120,
    )
    return r.status_code


@dataclass
class StreamOutcome:
    status: int
    content_events: int = 0
    done: bool = False
    error: bool = False


def stream(gw: Gateway, model: str, max_tokens: int) -> StreamOutcome:
    body = {"model": model, "prompt": "hello", "max_tokens": max_tokens, "stream": True}
    with httpx.stream(
        "POST", f"{gw.url}/completions", json=body, headers={"Authorization": f"Bearer {gw.api_key}"},
        timeout=120,
    ) as r:  # fmt: skip
        out = StreamOutcome(r.status_code)
        for line in r.iter_lines():
            if line == "data: [DONE]":
                out.done = True
            elif line.startswith('data: {"error"'):
                out.error = True
            elif line.startswith("data: ") and '"text"' in line:
                out.content_events += 1
    return out


class Load:
    """Streams sent back to back from `n` threads until stopped; every outcome kept."""

    def __init__(self, gw: Gateway, model: str, n: int, max_tokens: int) -> None:
        self.outcomes: list[StreamOutcome] = []
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(n)
        self._futures = [self._pool.submit(self._loop, gw, model, max_tokens) for _ in range(n)]

    def _loop(self, gw: Gateway, model: str, max_tokens: int) -> None:
        while not self._stop.is_set():
            self.outcomes.append(stream(gw, model, max_tokens))

    def stop(self) -> list[StreamOutcome]:
        self._stop.set()
        for f in self._futures:
            f.result(timeout=180)
        self._pool.shutdown()
        return self.outcomes


# -- the tests, in order -----------------------------------------------------------------------


def test_min_hot_on_both_clusters_and_load_spread(fed: Federation) -> None:
    gw = fed.gw
    wait_until("fed-hot READY on both clusters", lambda: ready(gw, "fed-hot") == {A: 1, B: 1}, 180, gw)
    before = {c: served(gw, "fed-hot", c) for c in (A, B)}
    with ThreadPoolExecutor(12) as pool:
        codes = list(pool.map(lambda _: complete(gw, "fed-hot", 8), range(48)))
    assert codes == [200] * 48
    got = {c: served(gw, "fed-hot", c) - before[c] for c in (A, B)}
    assert sum(got.values()) == 48
    assert min(got.values()) >= 8, got  # both clusters took a fair share
    assert metric(gw, "hearth_scheduler_decisions_total", model="fed-hot", action="start") >= 2


def test_pinning_to_one_cluster(fed: Federation) -> None:
    gw = fed.gw
    before = {c: served(gw, "fed-hot", c) for c in (A, B)}
    for _ in range(5):
        assert complete(gw, f"fed-hot@{B}") == 200
    assert {c: served(gw, "fed-hot", c) - before[c] for c in (A, B)} == {A: 0, B: 5}


def test_cold_model_started_on_the_preferred_cluster_while_the_stream_is_held(fed: Federation) -> None:
    gw = fed.gw
    assert set(status(gw)["fed-cold"]) == {A, B}
    assert all(e["state"] == "cold" for e in status(gw)["fed-cold"].values())
    listed = httpx.get(f"{gw.url}/models", headers={"Authorization": f"Bearer {gw.api_key}"}).json()
    assert "fed-cold" in {m["id"] for m in listed["data"]}  # cold models are listed too
    body = {"model": "fed-cold", "prompt": "hi", "max_tokens": 4, "stream": True}
    with httpx.stream(
        "POST", f"{gw.url}/completions", json=body, headers={"Authorization": f"Bearer {gw.api_key}"},
        timeout=180,
    ) as r:  # fmt: skip
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line]
    comments = [line for line in lines if line.startswith(":")]
    assert any(f"cluster={B}" in c and "estimated_wait=" in c for c in comments), comments
    assert lines[-1] == "data: [DONE]"
    assert any('"text"' in line for line in lines)
    # Both clusters are busy with fed-hot (no whole node free): hearth-b's priority decides.
    assert ready(gw, "fed-cold") == {A: 0, B: 1}
    assert status(gw)["fed-cold"][B]["estimated_wait_s"] == 0


def test_scancel_of_a_busy_worker_loses_no_request(fed: Federation) -> None:
    gw = fed.gw
    ((job, _),) = jobs(fed.clusters[A], "fed-hot")
    load = Load(gw, "fed-hot", n=8, max_tokens=40)  # ~0.8 s per stream
    time.sleep(3)
    subprocess.run(["scancel", job], env=fed.clusters[A].env, check=True)
    time.sleep(4)
    outcomes = load.stop()
    assert len(outcomes) > 20
    for o in outcomes:
        assert o.status == 200
        assert o.done
        # A stream may break only after it had bytes: one that had none was sent elsewhere.
        assert not o.error or o.content_events > 0
    assert sum(1 for o in outcomes if not o.error) >= len(outcomes) - 8
    # The scheduler puts min_hot back on hearth-a.
    wait_until("fed-hot back on hearth-a", lambda: ready(gw, "fed-hot") == {A: 1, B: 1}, 180, gw)
    assert complete(gw, f"fed-hot@{A}") == 200


def test_controller_down_moves_traffic_to_the_other_cluster(fed: Federation) -> None:
    gw = fed.gw
    a = fed.clusters[A]
    a.stop_controller()
    try:
        wait_until(
            "hearth-a's site reported down",
            lambda: (
                metric(gw, "hearth_site_up", cluster=A) == 0 and metric(gw, "hearth_site_up", cluster=B) == 1
            ),
            120,
            gw,
        )
        before = {c: served(gw, "fed-hot", c) for c in (A, B)}
        with ThreadPoolExecutor(4) as pool:
            codes = list(pool.map(lambda _: complete(gw, "fed-hot"), range(16)))
        assert codes == [200] * 16
        assert {c: served(gw, "fed-hot", c) - before[c] for c in (A, B)} == {A: 0, B: 16}
    finally:
        a.start_controller()
    wait_until("hearth-a's site back", lambda: metric(gw, "hearth_site_up", cluster=A) == 1, 120, gw)


def test_scale_out_under_demand_then_idle_scale_down_to_min_hot(fed: Federation) -> None:
    gw = fed.gw
    wait_until("fed-scale at min_hot", lambda: ready(gw, "fed-scale") == {A: 1, B: 0}, 180, gw)
    load = Load(gw, "fed-scale", n=8, max_tokens=50)  # demand 8 > 1 worker x target_load 2
    try:
        wait_until("a second fed-scale worker", lambda: sum(ready(gw, "fed-scale").values()) == 2, 180, gw)
    finally:
        outcomes = load.stop()
    assert all(o.status == 200 and o.done and not o.error for o in outcomes)
    # Idle for idle_s (4 s): drained back to min_hot, which stays on hearth-a.
    wait_until("fed-scale back at min_hot", lambda: ready(gw, "fed-scale") == {A: 1, B: 0}, 120, gw)
    assert metric(gw, "hearth_scheduler_decisions_total", model="fed-scale", action="drain") >= 1


def test_walltime_renewal_fails_no_request(fed: Federation) -> None:
    gw = fed.gw
    a = fed.clusters[A]
    wait_until("fed-renew READY", lambda: ready(gw, "fed-renew").get(A, 0) >= 1, 180, gw)
    # Its jobs have 2 minutes: each is renewed 100 s before its end (a replacement is started,
    # and the old one drained once the replacement answers), so generations follow each other
    # every half minute or so. Requests keep flowing throughout.
    initial = {j for j, _ in jobs(a, "fed-renew")}
    load = Load(gw, "fed-renew", n=3, max_tokens=10)
    try:
        wait_until(
            "every fed-renew job replaced",
            lambda: (
                not initial & {j for j, _ in jobs(a, "fed-renew")} and ready(gw, "fed-renew").get(A, 0) >= 1
            ),
            180,
            gw,
        )
        time.sleep(2)
    finally:
        outcomes = load.stop()
    assert len(outcomes) > 20
    failed = [o for o in outcomes if o.status != 200 or not o.done or o.error]
    assert failed == []
    assert metric(gw, "hearth_scheduler_decisions_total", model="fed-renew", action="renew") >= 1
    assert metric(gw, "hearth_scheduler_decisions_total", model="fed-renew", action="drain") >= 1


def test_two_replicas_sharing_redis_elect_one_leader(fed: Federation, logs: Path, tmp_path: Path) -> None:
    redis = RedisServer(tmp_path).start()
    replicas: list[Gateway] = []
    try:
        clusters = {
            A: cluster_config(fed.sites[A], tmp_path / "engine-a", priority=0),
            B: cluster_config(fed.sites[B], tmp_path / "engine-b", priority=0),
        }
        for i in range(2):
            replicas.append(start_gateway(
                logs, clusters=clusters, models={"fed-lead": {"min_hot": {B: 1}}},
                store_url=f"sqlite:///{tmp_path}/gw{i}.db", redis={"url": redis.url},
                relay={"discovery_interval_s": 1}, scheduler={"interval_s": 1, "leader_ttl_s": 3},
            ))  # fmt: skip

        def leaders() -> list[float]:
            return [metric(g, "hearth_scheduler_leader") for g in replicas]

        wait_until("one leader", lambda: sorted(leaders()) == [0.0, 1.0], 60)
        wait_until("fed-lead READY", lambda: ready(replicas[0], "fed-lead") == {A: 0, B: 1}, 180, replicas[0])
        time.sleep(3)  # a few more decisions: still exactly one worker, not one per replica
        assert len(jobs(fed.clusters[B], "fed-lead")) == 1
        leader = replicas[leaders().index(1.0)]
        follower = replicas[1 - replicas.index(leader)]
        leader.proc.kill()
        wait_until("the follower leads", lambda: metric(follower, "hearth_scheduler_leader") == 1, 30)
        assert complete(follower, "fed-lead") == 200
    finally:
        for g in replicas:
            g.stop()
        redis.stop()
        for job, _ in jobs(fed.clusters[B], "fed-lead"):
            subprocess.run(["scancel", job], env=fed.clusters[B].env, check=False)
