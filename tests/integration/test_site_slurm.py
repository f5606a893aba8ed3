"""The site side on a real Slurm cluster: workers submitted from the rendered template (containers
off) running the llama.cpp engine on a tiny GGUF model, driven through the site functions run by
Globus Compute's own engine (LocalProvider workers), and real tokens through a gateway whose
cluster uses the ComputeRelay."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from endpoints.functions import start_worker, status, stop_worker
from endpoints.local import LocalCompute
from endpoints.protocol import FUNCTIONS_VERSION
from endpoints.slurm import Slurm
from tests.support.gateway import Gateway, assert_ends_with_error_event, interrupted_stream, start_gateway
from tests.support.slurm import SlurmCluster
from tests.support.tiny_gguf import write_tiny_llama

pytestmark = pytest.mark.llamacpp

SiteCall = Callable[..., dict[str, Any]]


@pytest.fixture(scope="module")
def site_config(slurm_cluster: SlurmCluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("site")
    gguf = write_tiny_llama(root / "tiny.gguf")
    config = {
        "cluster": slurm_cluster.name,
        "state_dir": str(root / "state"),
        "slurm_conf": str(slurm_cluster.conf_path),
        "partition": slurm_cluster.partition,
        "python": sys.executable,
        "drain_seconds": 5,
        "models": {
            "tiny-llama": {"engine": "llamacpp", "path": str(gguf), "walltime": "00:10:00"},
            "broken": {"engine": "llamacpp", "path": str(root / "missing.gguf"), "walltime": "00:05:00",
                       "start_timeout_s": 60},
            "slow-sim": {"engine": "sim", "sim_ttft_ms": 5, "sim_itl_ms": 50, "walltime": "00:10:00"},
        },
    }  # fmt: skip
    path = root / "site.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def site(site_config: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SiteCall]:
    """Call a site function through Globus Compute's engine, as a registered endpoint would."""
    compute = LocalCompute(tmp_path_factory.mktemp("engine"), max_workers_per_node=2)
    compute.start()

    def call(fn: Callable[..., Any], **req: Any) -> dict[str, Any]:
        result: dict[str, Any] = compute.submit(
            fn, {"version": FUNCTIONS_VERSION, "site_config": str(site_config), **req}
        ).result(timeout=120)
        assert "failure" not in result, result["failure"]
        return result

    yield call
    compute.shutdown()


def wait_for_state(
    site: SiteCall, worker_id: str, wanted: set[str], timeout: float = 120
) -> tuple[dict[str, Any], list[str]]:
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = {w["worker_id"]: w for w in site(status)["workers"]}
        w = workers[worker_id]
        if not seen or seen[-1] != w["state"]:
            seen.append(w["state"])
        if w["state"] in wanted:
            return w, seen
        time.sleep(0.5)
    raise AssertionError(f"worker {worker_id} never reached {wanted}; went through {seen}")


def compute_gateway(logs: Path, tmp: Path, worker: dict[str, Any]) -> Gateway:
    cluster = {
        "relay": "compute",
        "compute": {"mode": "local", "provider": "local", "run_dir": str(tmp / "gw-engine")},
        "upstreams": [{"url": worker["base_url"], "api_key": worker["api_key"], "models": [worker["model"]]}],
    }
    g = start_gateway(logs, clusters={"site": cluster}, store_url=f"sqlite:///{tmp}/gw.db",
                      relay={"stream_idle_timeout_s": 10})  # fmt: skip
    return g


def job_time_limit(slurm_cluster: SlurmCluster, job_id: str) -> int | None:
    job = asyncio.run(Slurm(env=slurm_cluster.env).job(job_id))
    assert job is not None, f"Slurm does not know job {job_id}"
    return job.time_limit_s


def test_worker_life_cycle_with_real_tokens(
    site: SiteCall, slurm_cluster: SlurmCluster, logs: Path, tmp_path: Path
) -> None:
    # Longer than the model's walltime in site.yaml (00:10:00): the site's ceiling wins.
    started = site(start_worker, model="tiny-llama", walltime="01:00:00")["worker"]
    assert started["state"] in ("pending", "starting")
    assert started["api_key"] is None  # no key leaves the site before the worker is READY
    assert job_time_limit(slurm_cluster, started["job_id"]) == 600
    worker, seen = wait_for_state(site, started["worker_id"], {"ready", "failed"})
    assert worker["state"] == "ready", worker
    assert seen[0] in ("pending", "starting")
    assert worker["base_url"].startswith("http://")
    # The engine refuses anyone without this worker's own key.
    assert httpx.get(f"{worker['base_url']}/models").status_code == 401

    gw = compute_gateway(logs, tmp_path, worker)
    try:
        client = gw.client()
        reply = client.chat.completions.create(
            model="tiny-llama", messages=[{"role": "user", "content": "hello world"}], max_tokens=5
        )
        assert reply.usage is not None
        assert reply.usage.completion_tokens == 5
        chunks = list(
            client.completions.create(model="tiny-llama", prompt="hello", max_tokens=4, stream=True)
        )
        assert sum(1 for c in chunks if c.choices and c.choices[0].text) == 4
    finally:
        gw.stop()

    site(stop_worker, worker_id=worker["worker_id"], drain=True)
    gone, _ = wait_for_state(site, worker["worker_id"], {"gone", "failed"}, timeout=60)
    assert gone["state"] == "gone", gone


def test_a_worker_that_cannot_start_fails_with_its_reason(site: SiteCall) -> None:
    started = site(start_worker, model="broken")["worker"]
    failed, _ = wait_for_state(site, started["worker_id"], {"failed", "ready", "gone"}, timeout=90)
    assert failed["state"] == "failed", failed
    assert "missing.gguf" in failed["reason"] or "engine" in failed["reason"].lower(), failed["reason"]


def test_scancel_mid_stream_ends_the_stream_cleanly(
    site: SiteCall, slurm_cluster: SlurmCluster, logs: Path, tmp_path: Path
) -> None:
    submitted_at = time.time()
    # Shorter than the model's walltime in site.yaml (00:10:00): the job gets it.
    started = site(start_worker, model="slow-sim", walltime="00:05:00")["worker"]
    assert job_time_limit(slurm_cluster, started["job_id"]) == 300
    worker, _ = wait_for_state(site, started["worker_id"], {"ready", "failed"})
    assert worker["state"] == "ready", worker
    # What the gateway's router and scheduler read: the engine's load, and when the job ends.
    load = worker["load"]
    assert load is not None, "the READY sim worker's /metrics could not be read"
    assert isinstance(load["running"], int)
    assert isinstance(load["waiting"], int)
    assert load["generated_tokens"] is not None
    assert load["generated_tokens"] >= 1  # READY means its 1-token probe went through this engine
    assert abs(worker["ends_at"] - (submitted_at + 300)) < 60
    assert worker["ends_at"] > time.time()
    assert worker["starts_at"] is None
    gw = compute_gateway(logs, tmp_path, worker)
    try:
        body = {"model": "slow-sim", "prompt": "go", "max_tokens": 400, "stream": True}
        rest = interrupted_stream(
            gw, body, lambda: asyncio.run(Slurm(env=slurm_cluster.env).cancel(worker["job_id"]))
        )  # the job is killed mid-stream
        assert_ends_with_error_event(rest)
    finally:
        gw.stop()
    gone, _ = wait_for_state(site, worker["worker_id"], {"gone", "failed"}, timeout=60)
    assert gone["state"] == "gone"


def test_unknown_model_is_a_clear_site_failure(site_config: Path, site: SiteCall) -> None:
    compute_result = start_worker(
        {"version": FUNCTIONS_VERSION, "site_config": str(site_config), "model": "nope"}
    )
    assert compute_result["failure"]["kind"] == "site"
    assert "does not serve 'nope'" in compute_result["failure"]["detail"]


def cluster_states(gw: Gateway) -> dict[str, str]:
    """GET /v1/status: each model's state on the `site` cluster."""
    status = httpx.get(f"{gw.url}/status", headers={"Authorization": f"Bearer {gw.api_key}"}).json()
    return {m["model"]: c["state"] for m in status["models"] for c in m["clusters"] if c["cluster"] == "site"}


def test_gateway_discovers_ready_workers_from_the_site(
    site: SiteCall, site_config: Path, logs: Path, tmp_path: Path
) -> None:
    """No upstream in hearth.yaml: the gateway asks the site (status) and serves its READY workers."""
    cluster = {
        "relay": "compute",
        "compute": {"mode": "local", "provider": "local", "run_dir": str(tmp_path / "gw-engine"),
                    "discover_workers": True, "site_config": str(site_config)},
        "upstreams": [],
    }  # fmt: skip
    gw = start_gateway(logs, clusters={"site": cluster}, store_url=f"sqlite:///{tmp_path}/gw.db",
                       relay={"discovery_interval_s": 1})  # fmt: skip
    try:
        assert "tiny-llama" not in [m.id for m in gw.client().models.list().data]
        started = site(start_worker, model="tiny-llama")["worker"]
        worker, _ = wait_for_state(site, started["worker_id"], {"ready", "failed"})
        assert worker["state"] == "ready", worker
        deadline = time.monotonic() + 30
        while "tiny-llama" not in [m.id for m in gw.client().models.list().data]:
            assert time.monotonic() < deadline, "the gateway never listed the READY worker's model"
            time.sleep(0.5)
        reply = gw.client().completions.create(model="tiny-llama", prompt="hello", max_tokens=3)
        assert reply.usage is not None
        assert reply.usage.completion_tokens == 3
        assert cluster_states(gw) == {"tiny-llama": "hot", "broken": "cold", "slow-sim": "cold"}
        site(stop_worker, worker_id=worker["worker_id"], drain=False)
        wait_for_state(site, worker["worker_id"], {"gone", "failed"}, timeout=60)
        deadline = time.monotonic() + 30
        while "tiny-llama" in [m.id for m in gw.client().models.list().data]:
            assert time.monotonic() < deadline, "the stopped worker's model stayed listed"
            time.sleep(0.5)
        assert cluster_states(gw)["tiny-llama"] == "cold"  # the site can still start it
    finally:
        gw.stop()
