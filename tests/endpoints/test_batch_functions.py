"""The batch site functions (`endpoints.batch_functions`) and the job script they submit: staging
that a retry never duplicates, the payload limit, collecting whole durable lines from an offset,
idempotent submission, and the rendered script. Slurm is the real test cluster."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from endpoints.batch import BatchError, BatchJobs, BatchPaths, batch_command
from endpoints.batch_functions import (
    BATCH_FUNCTIONS,
    batch_cancel,
    batch_collect,
    batch_stage,
    batch_status,
    batch_submit,
)
from endpoints.batch_protocol import MAX_STAGE_BYTES, read_whole_lines
from endpoints.protocol import FUNCTIONS_VERSION
from endpoints.site import SiteConfig, load_site
from endpoints.workers import engine_launch
from tests.support.slurm import SlurmCluster


@pytest.fixture
def site_config(slurm_cluster: SlurmCluster, tmp_path: Path) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump({
        "cluster": slurm_cluster.name, "state_dir": str(tmp_path / "state"),
        "slurm_conf": str(slurm_cluster.conf_path), "partition": slurm_cluster.partition,
        "python": sys.executable, "drain_seconds": 5,
        "models": {
            "sim-batch": {"engine": "sim", "sim_ttft_ms": 1, "sim_itl_ms": 0, "walltime": "00:05:00"},
            "sim-other": {"engine": "sim"},
            "big": {"engine": "vllm", "path": "/models/big", "nodes": 2, "gpus": 4},
        },
    }))  # fmt: skip
    return path


@pytest.fixture
def site(site_config: Path) -> SiteConfig:
    return load_site(site_config)


def call(fn: Any, site_config: Path, **req: Any) -> dict[str, Any]:
    result: dict[str, Any] = fn({"version": FUNCTIONS_VERSION, "site_config": str(site_config), **req})
    assert "failure" not in result, result["failure"]
    return result


def failure(fn: Any, site_config: Path, **req: Any) -> str:
    result = fn({"version": FUNCTIONS_VERSION, "site_config": str(site_config), **req})
    assert result["failure"]["kind"] == "site", result
    detail: str = result["failure"]["detail"]
    return detail


def test_the_functions_to_register() -> None:
    assert set(BATCH_FUNCTIONS) == {
        "batch_stage",
        "batch_submit",
        "batch_status",
        "batch_collect",
        "batch_cancel",
    }
    assert batch_status({"version": "0", "batch_id": "b"})["failure"]["kind"] == "version"  # type: ignore[typeddict-item]


# -- staging ------------------------------------------------------------------------------------


def test_a_retried_part_is_not_duplicated(site_config: Path, site: SiteConfig) -> None:
    stage = lambda part, data, final=False: call(batch_stage, site_config, batch_id="s-1", part=part,  # noqa: E731
                                                 data=data, final=final)["staged"]  # fmt: skip
    assert stage(0, b'{"a": 1}\n{"b"') == {"batch_id": "s-1", "parts": 1, "bytes": 13, "complete": False}
    stage(0, b'{"a": 1}\n{"b"')  # the gateway did not hear back, and sends it again
    assert stage(1, b": 2}\n") == {"batch_id": "s-1", "parts": 2, "bytes": 18, "complete": False}
    done = stage(2, b'{"c": 3}\n', final=True)
    assert done == {"batch_id": "s-1", "parts": 3, "bytes": 27, "complete": True}
    paths = BatchJobs(site).paths("s-1")
    assert paths.input.read_bytes() == b'{"a": 1}\n{"b": 2}\n{"c": 3}\n'
    assert not paths.parts.exists()
    # A final part sent again, or a late retry of an earlier one, changes nothing.
    assert stage(2, b'{"c": 3}\n', final=True)["complete"]
    assert stage(1, b"garbage")["complete"]
    assert paths.input.read_bytes() == b'{"a": 1}\n{"b": 2}\n{"c": 3}\n'


def test_parts_of_an_abandoned_attempt_are_dropped(site_config: Path, site: SiteConfig) -> None:
    for part in range(3):  # a first attempt with smaller chunks, cut short by a gateway restart
        call(batch_stage, site_config, batch_id="s-2", part=part, data=b"old\n", final=False)
    call(batch_stage, site_config, batch_id="s-2", part=0, data=b"new-1\n", final=False)
    call(batch_stage, site_config, batch_id="s-2", part=1, data=b"new-2\n", final=True)
    assert BatchJobs(site).paths("s-2").input.read_bytes() == b"new-1\nnew-2\n"


def test_a_missing_part_is_refused(site_config: Path) -> None:
    call(batch_stage, site_config, batch_id="s-3", part=0, data=b"a\n", final=False)
    detail = failure(batch_stage, site_config, batch_id="s-3", part=3, data=b"d\n", final=True)
    assert "parts [1, 2] were never staged" in detail


def test_staged_parts_stay_under_the_payload_limit(site_config: Path) -> None:
    detail = failure(batch_stage, site_config, batch_id="s-4", part=0, data=b"x" * (MAX_STAGE_BYTES + 1),
                     final=True)  # fmt: skip
    assert f"at most {MAX_STAGE_BYTES} bytes" in detail
    assert "part must be" in failure(batch_stage, site_config, batch_id="s-4", part=-1, data=b"", final=True)
    assert "bad batch id" in failure(batch_stage, site_config, batch_id="../x", part=0, data=b"", final=True)
    biggest = call(batch_stage, site_config, batch_id="s-4", part=0, data=b"x" * MAX_STAGE_BYTES, final=True)
    assert biggest["staged"]["bytes"] == MAX_STAGE_BYTES


# -- collecting ---------------------------------------------------------------------------------


def line(n: int, size: int = 0) -> bytes:
    return json.dumps({"custom_id": f"{n}:c", "pad": "x" * size}).encode() + b"\n"


def set_progress(paths: BatchPaths, durable: int) -> None:
    paths.progress.write_text(json.dumps({"done": 0, "total": 9, "durable_bytes": durable, "at": ""}))


@pytest.fixture
def running_batch(site_config: Path, site: SiteConfig) -> Iterator[BatchPaths]:
    """A batch whose job runs (a `sleep`), with its output written by the test."""
    jobs = BatchJobs(site)
    paths = jobs.paths("c-1")
    paths.dir.mkdir(parents=True)
    paths.input.write_text("{}\n")
    asyncio.run(jobs.submit("c-1", "sleep 120", str(paths.input), str(paths.output), walltime="00:05:00"))
    yield paths
    call(batch_cancel, site_config, batch_id="c-1")


def test_collect_gives_whole_durable_lines_from_an_offset(
    site_config: Path, running_batch: BatchPaths
) -> None:
    paths = running_batch
    paths.output.write_bytes(line(1) + line(2) + line(3) + b'{"custom_id": "4:c", "pa')  # a line half-written
    collect = lambda offset, **kw: call(batch_collect, site_config, batch_id="c-1", offset=offset, **kw)  # noqa: E731

    nothing = collect(0)  # the runner has not said anything is durable yet
    assert nothing["output"]["data"] == b""
    assert nothing["batch"]["finished"] is False
    set_progress(paths, len(line(1) + line(2)))
    first = collect(0)["output"]
    assert first["data"] == line(1) + line(2)
    assert first["next_offset"] == len(line(1) + line(2))
    assert collect(first["next_offset"])["output"]["data"] == b""
    set_progress(paths, len(line(1) + line(2) + line(3)))
    assert collect(first["next_offset"])["output"]["data"] == line(3)
    # At most max_bytes, in whole lines.
    one = collect(0, max_bytes=len(line(1)) + 5)["output"]
    assert (one["data"], one["next_offset"]) == (line(1), len(line(1)))


def test_collect_reads_to_the_end_once_the_job_ended(site_config: Path, running_batch: BatchPaths) -> None:
    paths = running_batch
    paths.output.write_bytes(line(1) + line(2) + b'{"torn')
    set_progress(paths, 0)
    cancelled = call(batch_cancel, site_config, batch_id="c-1")["batch"]
    deadline = time.monotonic() + 30
    while not cancelled["finished"]:
        assert time.monotonic() < deadline, cancelled
        time.sleep(0.2)
        cancelled = call(batch_status, site_config, batch_id="c-1")["batch"]
    assert cancelled["state"] == "cancelled"
    ended = call(batch_collect, site_config, batch_id="c-1", offset=0)
    assert ended["batch"]["finished"] is True
    assert ended["output"]["data"] == line(1) + line(2)  # never the torn tail


def test_a_line_longer_than_max_bytes_is_skipped(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_bytes(line(1) + line(2, size=5000) + line(3))
    size = out.stat().st_size
    first = read_whole_lines(out, 0, size, 1000)
    assert (first["data"], first["skipped"]) == (line(1), 0)
    second = read_whole_lines(out, first["next_offset"], size, 1000)
    assert second["skipped"] == len(line(2, size=5000))
    assert second["data"] == line(3)
    assert second["next_offset"] == size
    assert read_whole_lines(out, size, size, 1000)["data"] == b""
    # A long line whose end is not durable yet is waited for, not skipped.
    partial = read_whole_lines(out, len(line(1)), len(line(1)) + 2000, 1000)
    assert (partial["data"], partial["skipped"], partial["next_offset"]) == (b"", 0, len(line(1)))


# -- submitting ---------------------------------------------------------------------------------


def test_submitting_a_model_batch_is_idempotent(site_config: Path) -> None:
    assert "is not staged" in failure(batch_submit, site_config, batch_id="m-1", model="sim-batch")
    call(batch_stage, site_config, batch_id="m-1", part=0, data=b"", final=True)
    first = call(batch_submit, site_config, batch_id="m-1", model="sim-batch")["batch"]
    again = call(batch_submit, site_config, batch_id="m-1", model="sim-batch")["batch"]
    assert again["job_id"] == first["job_id"]
    assert "already submitted" in failure(batch_submit, site_config, batch_id="m-1", model="sim-other")
    assert "does not serve 'nope'" in failure(batch_submit, site_config, batch_id="m-2", model="nope")
    assert "spans 2 nodes" in failure(batch_submit, site_config, batch_id="m-2", model="big")
    deadline = time.monotonic() + 60  # an empty input: the runner has nothing to do
    while (done := call(batch_status, site_config, batch_id="m-1")["batch"])["state"] != "finished":
        assert time.monotonic() < deadline, done
        assert done["state"] not in ("failed", "cancelled"), done
        time.sleep(0.3)
    assert done | {"job_id": None, "checkpoint_dir": None} == {
        "batch_id": "m-1", "job_id": None, "state": "finished", "slurm_state": "completed", "exit_status": 0,
        "restarts": 0, "checkpoint_dir": None, "finished": True, "done": 0, "total": 0,
    }  # fmt: skip


def test_the_job_script_starts_the_engine_through_the_runner(site: SiteConfig, tmp_path: Path) -> None:
    script = BatchJobs(site).render_model("r-1", "sim-batch", concurrency=32)
    assert "-m endpoints.batch_runner" in script
    assert "--served-model=sim-batch" in script
    assert "--concurrency=32" in script
    assert '--input="${HEARTH_BATCH_INPUT}"' in script
    assert "#SBATCH --time=00:05:00" in script
    (tmp_path / "job.sh").write_text(script)
    subprocess.run(["bash", "-n", str(tmp_path / "job.sh")], check=True)
    subprocess.run(["shellcheck", "-s", "bash", str(tmp_path / "job.sh")], check=True)

    contained = site.model_copy(update={
        "containers": site.containers.model_copy(update={"enabled": True, "image": "/sw/vllm.sif"}),
        "models": {"llama": site.models["sim-batch"].model_copy(update={"engine": "vllm", "path": "/m/llama",
                                                                          "gpus": 4})},
    })  # fmt: skip
    script = BatchJobs(contained).render_model("r-2", "llama")
    assert "apptainer exec --cleanenv --nv /sw/vllm.sif vllm serve /m/llama" in script
    assert "#SBATCH --gres=gpu:4" in script
    (tmp_path / "job2.sh").write_text(script)
    subprocess.run(["bash", "-n", str(tmp_path / "job2.sh")], check=True)
    subprocess.run(["shellcheck", "-s", "bash", str(tmp_path / "job2.sh")], check=True)
    with pytest.raises(BatchError, match="bad batch id"):
        BatchJobs(site).render_model("a b", "sim-batch")


def test_the_engine_command_reaches_the_runner_unexpanded(site: SiteConfig) -> None:
    """The engine's line is one argument the job script's bash leaves alone (the runner's own
    `bash -c` expands its port and key), whatever characters the site's engine args hold."""
    odd = site.model_copy(update={"models": {"m": site.models["sim-batch"].model_copy(
        update={"args": ("--log-level=$HOME `id` \"quoted\" back\\slash 'single'",)})}})  # fmt: skip
    command = batch_command(odd, "m", BatchJobs(odd).paths("b"))
    env = {"HEARTH_BATCH_INPUT": "in", "HEARTH_BATCH_OUTPUT": "out"}
    printf = f"printf '%s\\n' {command.split(' ', 1)[1]}"  # every word after the interpreter
    argv = subprocess.run(["bash", "-c", printf], capture_output=True, text=True, check=True, env=env).stdout
    engine = engine_launch(odd, "m", odd.models["m"])
    assert argv.splitlines()[:3] == ["-m", "endpoints.batch_runner", "--input=in"]
    assert argv.splitlines()[-1] == f"--engine-command={engine.shell()}"
