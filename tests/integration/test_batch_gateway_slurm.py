"""A batch through the whole chain: the OpenAI SDK, a real gateway, its batch runner choosing a
Slurm batch job, the site functions run by Globus Compute's engine (LocalProvider), a real
Slurm cluster running the job with the sim engine inside it."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
import yaml

from tests.support.gateway import start_gateway
from tests.support.slurm import SlurmCluster

pytestmark = pytest.mark.timeout(300)


def test_large_batch_runs_as_a_slurm_job(slurm_cluster: SlurmCluster, logs: Path, tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump({
        "cluster": slurm_cluster.name, "state_dir": str(tmp_path / "state"),
        "slurm_conf": str(slurm_cluster.conf_path), "partition": slurm_cluster.partition,
        "python": sys.executable, "drain_seconds": 5,
        "models": {"batch-sim": {"engine": "sim", "sim_ttft_ms": 1, "sim_itl_ms": 1, "walltime": "00:10:00"}},
    }))  # fmt: skip
    cluster = {
        "relay": "compute",
        "batch_jobs": True,
        "compute": {"mode": "local", "provider": "local", "run_dir": str(tmp_path / "gw-engine"),
                    "discover_workers": True, "site_config": str(site)},
        "upstreams": [],
    }  # fmt: skip
    gw = start_gateway(
        logs,
        clusters={"site": cluster},
        store_url=f"sqlite:///{tmp_path}/gw.db",
        relay={"discovery_interval_s": 1},
        batch={"files_dir": str(tmp_path / "files"), "slurm_min_lines": 100, "slurm_poll_interval_s": 1},
    )
    try:
        client = gw.client()
        n = 400
        lines = [
            {"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": "batch-sim", "messages": [{"role": "user", "content": f"n{i}"}],
                      "max_tokens": 3}}
            for i in range(n)
        ]  # fmt: skip
        upload = client.files.create(
            file=("in.jsonl", io.BytesIO(b"".join(orjson.dumps(x) + b"\n" for x in lines))), purpose="batch"
        )
        deadline = time.monotonic() + 60  # the site lists its models once the engine is up
        while True:
            batch = client.batches.create(
                input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            while batch.status == "validating":
                time.sleep(0.5)
                batch = client.batches.retrieve(batch.id)
            if batch.status != "failed" or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert batch.status in ("in_progress", "finalizing", "completed"), batch.errors
        deadline = time.monotonic() + 200
        while batch.status not in ("completed", "failed", "expired", "cancelled"):
            assert time.monotonic() < deadline, batch
            time.sleep(1)
            batch = client.batches.retrieve(batch.id)
        assert batch.status == "completed", batch
        assert (batch.request_counts.completed, batch.request_counts.failed) == (n, 0)
        out = [orjson.loads(x) for x in client.files.content(batch.output_file_id).read().splitlines()]
        assert [x["custom_id"] for x in out] == [f"q{i}" for i in range(n)]
        assert all(x["response"]["body"]["model"] == "batch-sim" for x in out)
        jobs = subprocess.run(
            ["squeue", "-h", "-t", "all", "-o", "%j"], env=slurm_cluster.env, capture_output=True, text=True
        ).stdout
        assert "hearth-batch" in jobs  # it ran as a Slurm batch job
    finally:
        gw.stop()
