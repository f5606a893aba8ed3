"""BatchJobs on a real Slurm cluster with an admin-given command (the command form the site's
own tooling may use; the gateway's site functions only name a model): the rendered batch
template runs, the job keeps status.json, status reports it; a failing command is reported."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest
import yaml

from endpoints.batch import BatchError, BatchJob, BatchJobs
from endpoints.site import load_site
from tests.support.slurm import SlurmCluster


@pytest.fixture
def jobs(slurm_cluster: SlurmCluster, tmp_path: Path) -> BatchJobs:
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump({
        "cluster": slurm_cluster.name, "state_dir": str(tmp_path / "state"),
        "slurm_conf": str(slurm_cluster.conf_path), "partition": slurm_cluster.partition,
        "python": sys.executable,
    }))  # fmt: skip
    return BatchJobs(load_site(path))


def _wait(jobs: BatchJobs, batch_id: str, states: set[str], timeout: float = 60) -> BatchJob:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = asyncio.run(jobs.status(batch_id))
        if job.state in states:
            return job
        time.sleep(0.5)
    raise AssertionError(f"batch {batch_id} never reached {states}")


def test_batch_job_runs_to_finished(jobs: BatchJobs, tmp_path: Path) -> None:
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text('{"custom_id": "a"}\n{"custom_id": "b"}\n')
    command = 'tr a-z A-Z < "$HEARTH_BATCH_INPUT" > "$HEARTH_BATCH_OUTPUT"'
    submitted = asyncio.run(jobs.submit("b-1", command, str(src), str(dst), walltime="00:05:00"))
    assert submitted.job_id
    done = _wait(jobs, "b-1", {"finished", "failed"})
    assert done.state == "finished", done
    assert done.exit_status == 0
    assert dst.read_text() == '{"CUSTOM_ID": "A"}\n{"CUSTOM_ID": "B"}\n'
    with pytest.raises(BatchError, match="already submitted"):
        asyncio.run(jobs.submit("b-1", "true", str(src), str(dst)))


def test_failing_batch_command_is_reported(jobs: BatchJobs, tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text("{}\n")
    asyncio.run(jobs.submit("b-2", "exit 3", str(src), str(tmp_path / "out.jsonl")))
    failed = _wait(jobs, "b-2", {"finished", "failed"})
    assert failed.state == "failed"
    assert failed.exit_status == 3


def test_bad_batch_ids_are_refused(jobs: BatchJobs) -> None:
    with pytest.raises(BatchError, match="bad batch id"):
        asyncio.run(jobs.status("../x"))
