"""Cold start on demand through the whole chain: a gateway whose cluster's site lists a model no
worker serves, the site functions run by Globus Compute's engine, a real Slurm cluster starting
the worker (the sim engine) when the model is first asked for."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.support.gateway import Gateway, start_gateway
from tests.support.slurm import SlurmCluster

pytestmark = pytest.mark.timeout(300)


def site_config(slurm: SlurmCluster, root: Path) -> Path:
    path = root / "site.yaml"
    path.write_text(yaml.safe_dump({
        "cluster": slurm.name, "state_dir": str(root / "state"), "slurm_conf": str(slurm.conf_path),
        "partition": slurm.partition, "python": sys.executable, "drain_seconds": 5,
        "models": {
            "cold-a": {"engine": "sim", "sim_ttft_ms": 1, "sim_itl_ms": 20, "walltime": "00:10:00"},
            "cold-b": {"engine": "sim", "sim_ttft_ms": 1, "sim_itl_ms": 20, "walltime": "00:10:00"},
        },
    }))  # fmt: skip
    return path


def cold_gateway(slurm: SlurmCluster, logs: Path, tmp_path: Path, **relay: float) -> Gateway:
    """A gateway whose one cluster's site lists cold-a and cold-b and may start workers."""
    cluster = {
        "relay": "compute",
        "compute": {"mode": "local", "provider": "local", "run_dir": str(tmp_path / "gw-engine"),
                    "discover_workers": True, "start_workers": True,
                    "site_config": str(site_config(slurm, tmp_path))},
        "upstreams": [],
    }  # fmt: skip
    return start_gateway(
        logs,
        clusters={"site": cluster},
        store_url=f"sqlite:///{tmp_path}/gw.db",
        relay={"discovery_interval_s": 1, **relay},
    )


@pytest.fixture
def gateway(slurm_cluster: SlurmCluster, logs: Path, tmp_path: Path) -> Iterator[Gateway]:
    gw = cold_gateway(slurm_cluster, logs, tmp_path, cold_start_wait_s=120, keepalive_s=1)
    yield gw
    gw.stop()
    cancel_workers(slurm_cluster)


def cancel_workers(slurm: SlurmCluster) -> None:
    """Cancel the workers these tests started: they would hold the session cluster's CPUs."""
    out = subprocess.run(
        ["squeue", "--noheader", "--format=%i %j"], env=slurm.env, capture_output=True, text=True
    ).stdout
    for job_id, name in (line.split(maxsplit=1) for line in out.splitlines() if line.strip()):
        if "-cold-" in name:
            subprocess.run(["scancel", job_id], env=slurm.env, check=False)


def states(gw: Gateway) -> dict[str, str]:
    body = httpx.get(f"{gw.url}/status", headers={"Authorization": f"Bearer {gw.api_key}"}).json()
    return {m["model"]: m["clusters"][0]["state"] for m in body["models"]}


def wait_listed(gw: Gateway) -> None:
    deadline = time.monotonic() + 60  # the first status goes through the engine's first task
    while states(gw).get("cold-a") != "cold":
        assert time.monotonic() < deadline, states(gw)
        time.sleep(0.5)


def test_cold_model_started_on_demand_and_answered(gateway: Gateway) -> None:
    wait_listed(gateway)
    reply = gateway.client(timeout=180).chat.completions.create(
        model="cold-a", messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 3
    assert states(gateway)["cold-a"] == "hot"


def test_streaming_client_held_with_keepalives(gateway: Gateway) -> None:
    wait_listed(gateway)
    body = {
        "model": "cold-b",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4,
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {gateway.api_key}"}
    with httpx.stream(
        "POST", f"{gateway.url}/chat/completions", json=body, headers=headers, timeout=180
    ) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line]
    comments = [line for line in lines if line.startswith(":")]
    data = [line for line in lines if line.startswith("data: ")]
    assert comments
    assert all("hearth cold-start model=cold-b" in c for c in comments)
    assert any("state=pending" in c or "state=starting" in c for c in comments)
    assert data[-1] == "data: [DONE]"
    assert any('"content"' in d for d in data)


def test_not_started_in_time_is_503_with_retry_after(
    slurm_cluster: SlurmCluster, logs: Path, tmp_path: Path
) -> None:
    gw = cold_gateway(slurm_cluster, logs, tmp_path, cold_start_wait_s=0.2)
    try:
        wait_listed(gw)
        r = httpx.post(
            f"{gw.url}/chat/completions",
            json={"model": "cold-a", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {gw.api_key}"},
            timeout=60,
        )
        assert r.status_code == 503
        assert r.headers["retry-after"] == "30"
        error = r.json()["error"]
        assert error["code"] == "model_starting"
        assert "/v1/status" in error["message"]
    finally:
        gw.stop()
        cancel_workers(slurm_cluster)
