"""The batch seam on a real Slurm cluster: batch_submit runs the rendered batch template, the
job keeps status.json, batch_status reports it; a failing command is reported as failed."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from endpoints.functions import batch_status, batch_submit
from endpoints.protocol import FUNCTIONS_VERSION
from tests.support.slurm import SlurmCluster


@pytest.fixture
def site_config(slurm_cluster: SlurmCluster, tmp_path: Path) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump({
        "cluster": slurm_cluster.name, "state_dir": str(tmp_path / "state"),
        "slurm_conf": str(slurm_cluster.conf_path), "partition": slurm_cluster.partition,
        "python": sys.executable,
    }))  # fmt: skip
    return path


def _call(fn: Any, site_config: Path, **req: Any) -> dict[str, Any]:
    result: dict[str, Any] = fn({"version": FUNCTIONS_VERSION, "site_config": str(site_config), **req})
    assert "failure" not in result, result["failure"]
    return result


def _wait(site_config: Path, batch_id: str, states: set[str], timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch: dict[str, Any] = _call(batch_status, site_config, batch_id=batch_id)["batch"]
        if batch["state"] in states:
            return batch
        time.sleep(0.5)
    raise AssertionError(f"batch {batch_id} never reached {states}")


def test_batch_job_runs_to_finished(site_config: Path, tmp_path: Path) -> None:
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text('{"custom_id": "a"}\n{"custom_id": "b"}\n')
    command = 'tr a-z A-Z < "$HEARTH_BATCH_INPUT" > "$HEARTH_BATCH_OUTPUT"'
    submitted = _call(batch_submit, site_config, batch_id="b-1", command=command, input_path=str(src),
                      output_path=str(dst), resources={"walltime": "00:05:00"})["batch"]  # fmt: skip
    assert submitted["job_id"]
    done = _wait(site_config, "b-1", {"finished", "failed"})
    assert done["state"] == "finished", done
    assert done["exit_status"] == 0
    assert dst.read_text() == '{"CUSTOM_ID": "A"}\n{"CUSTOM_ID": "B"}\n'
    again = batch_submit({"version": FUNCTIONS_VERSION, "site_config": str(site_config), "batch_id": "b-1",
                          "command": "true", "input_path": str(src), "output_path": str(dst)})  # fmt: skip
    assert "already submitted" in again["failure"]["detail"]


def test_failing_batch_command_is_reported(site_config: Path, tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text("{}\n")
    _call(batch_submit, site_config, batch_id="b-2", command="exit 3", input_path=str(src),
          output_path=str(tmp_path / "out.jsonl"))  # fmt: skip
    failed = _wait(site_config, "b-2", {"finished", "failed"})
    assert failed["state"] == "failed"
    assert failed["exit_status"] == 3


def test_bad_batch_ids_are_refused(site_config: Path) -> None:
    result = batch_status({"version": FUNCTIONS_VERSION, "site_config": str(site_config), "batch_id": "../x"})
    assert result["failure"]["kind"] == "site"
    assert "bad batch id" in result["failure"]["detail"]
