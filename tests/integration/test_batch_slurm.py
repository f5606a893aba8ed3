"""Large batches as real Slurm batch jobs: SlurmExecutor → the batch site functions run by Globus
Compute's own engine (LocalProvider workers) → sbatch of slurm/batch.sbatch.j2 → Hearth's runner
starting the sim engine inside the job. Every line recorded exactly once: staged through Globus
Compute in chunks or through a shared directory, across a pre-emption (`scontrol requeue`), a
gateway restart, and a cancel that keeps the finished lines."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from endpoints.batch_functions import BATCH_FUNCTIONS
from endpoints.functions import SITE_FUNCTIONS
from endpoints.local import LocalCompute
from endpoints.protocol import FUNCTIONS_VERSION
from endpoints.slurm import JobState, Slurm
from gateway.batch.executor import BatchLine, BatchSpec, LineResult
from gateway.batch.slurm_executor import SlurmExecutor
from gateway.config import BatchSettings
from gateway.relay.compute import LocalTransport
from tests.support.slurm import SlurmCluster

PUBLIC = "public-sim"


class BatchTransport(LocalTransport):
    """The gateway's LocalTransport with the batch functions registered, counting the calls."""

    FUNCTIONS = {**SITE_FUNCTIONS, **BATCH_FUNCTIONS}

    def __init__(self, compute: LocalCompute) -> None:
        super().__init__(compute)
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def call(self, function: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        self.calls.append((function, dict(payload)))
        return await super().call(function, payload)


@pytest.fixture(scope="module")
def site_config(slurm_cluster: SlurmCluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("batch-site")
    path = root / "site.yaml"
    path.write_text(yaml.safe_dump({
        "cluster": slurm_cluster.name, "state_dir": str(root / "state"),
        "slurm_conf": str(slurm_cluster.conf_path), "partition": slurm_cluster.partition,
        "python": sys.executable, "drain_seconds": 10,
        "models": {
            "fast-sim": {"engine": "sim", "sim_ttft_ms": 1, "sim_itl_ms": 0, "walltime": "00:10:00"},
            "slow-sim": {"engine": "sim", "sim_ttft_ms": 15, "sim_itl_ms": 0, "walltime": "00:10:00"},
        },
    }))  # fmt: skip
    return path


@pytest.fixture(scope="module")
async def transport(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[BatchTransport]:
    t = BatchTransport(LocalCompute(tmp_path_factory.mktemp("engine"), max_workers_per_node=2))
    await t.start()
    await t.call("batch_status", {"version": FUNCTIONS_VERSION, "batch_id": "warm-up"})  # the workers start
    yield t
    await t.close()


class Results:
    """The recorder the batch runner would pass, counting every call."""

    def __init__(self) -> None:
        self.calls: Counter[int] = Counter()
        self.first: dict[int, LineResult] = {}

    async def record(self, result: LineResult) -> None:
        self.calls[result.line] += 1
        self.first.setdefault(result.line, result)


def make_lines(n: int) -> list[BatchLine]:
    # custom ids repeat on purpose: users may, and the output must still map back to its line
    return [BatchLine(i, f"req-{i % 50}", {"model": PUBLIC, "max_tokens": 2,
                                           "messages": [{"role": "user", "content": f"line {i}"}]})
            for i in range(1, n + 1)]  # fmt: skip


def make_spec(batch_id: str, n: int, saved: list[dict[str, Any]]) -> BatchSpec:
    async def save(state: dict[str, Any]) -> None:
        saved.append(dict(state))

    return BatchSpec(batch_id, "alice", "/v1/chat/completions", PUBLIC, n, save_state=save)


def executor(transport: BatchTransport, site_config: Path, model: str, **kw: Any) -> SlurmExecutor:
    settings = BatchSettings(stage_chunk_bytes=64 * 1024, slurm_poll_interval_s=0.3)
    return SlurmExecutor("hearth-a", transport, settings, site_config=str(site_config),
                         served_names={PUBLIC: model}, **kw)  # fmt: skip


def site_output(site_config: Path, batch_id: str) -> Counter[str]:
    state_dir = Path(yaml.safe_load(site_config.read_text())["state_dir"])
    out = state_dir / "batches" / batch_id / "output.jsonl"
    return Counter(json.loads(line)["custom_id"] for line in out.read_text().splitlines())


async def site_call(
    transport: BatchTransport, site_config: Path, function: str, **req: Any
) -> dict[str, Any]:
    result = await transport.call(
        function, {"version": FUNCTIONS_VERSION, "site_config": str(site_config), **req}
    )
    assert "failure" not in result, result
    batch: dict[str, Any] = result["batch"]
    return batch


async def wait_finished(transport: BatchTransport, site_config: Path, batch_id: str) -> dict[str, Any]:
    """The job's status once it has ended (the executor returns once every line is recorded,
    while the runner may still be stopping its engine)."""
    deadline = time.monotonic() + 30
    while True:
        status = await site_call(transport, site_config, "batch_status", batch_id=batch_id)
        if status["finished"]:
            return status
        assert time.monotonic() < deadline, status
        await asyncio.sleep(0.2)


async def wait_recorded(
    results: Results, at_least: int, task: asyncio.Task[None], timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while len(results.calls) < at_least:
        if task.done():
            task.result()
            raise AssertionError(f"the batch ended with {len(results.calls)} lines, before {at_least}")
        assert time.monotonic() < deadline, f"only {len(results.calls)} lines recorded"
        await asyncio.sleep(0.1)


def assert_complete(results: Results, lines: list[BatchLine]) -> None:
    assert len(results.calls) == len(lines)
    assert set(results.calls.values()) == {1}, "a line was recorded twice"
    for line in lines:
        result = results.first[line.line]
        assert result.ok, result
        assert result.custom_id == line.custom_id
        assert result.body is not None
        assert result.body["model"] == PUBLIC  # the engine's name mapped back
        assert (result.prompt_tokens, result.completion_tokens) == (2, 2)
        assert result.request_id


@pytest.mark.parametrize("mode", ["staged", "shared"])
async def test_a_large_batch_runs_as_one_slurm_job(
    transport: BatchTransport, site_config: Path, mode: str
) -> None:
    batch_id = f"big-{mode}"
    lines = make_lines(3000)
    saved: list[dict[str, Any]] = []
    spec = make_spec(batch_id, len(lines), saved)
    state_dir = Path(yaml.safe_load(site_config.read_text())["state_dir"])
    shared = state_dir / "batches" if mode == "shared" else None
    ex = executor(transport, site_config, "fast-sim", shared_dir=shared)
    transport.calls.clear()
    results = Results()
    started = time.monotonic()
    await asyncio.wait_for(ex.run(spec, lines, results.record, asyncio.Event()), 90)
    elapsed = time.monotonic() - started

    assert_complete(results, lines)
    output = site_output(site_config, batch_id)
    assert len(output) == 3000
    assert set(output.values()) == {1}
    assert saved[0]["job_id"]
    assert saved[-1]["offset"] == (state_dir / "batches" / batch_id / "output.jsonl").stat().st_size
    used = Counter(name for name, _ in transport.calls)
    if mode == "staged":
        stages = [p for name, p in transport.calls if name == "batch_stage"]
        assert len(stages) >= 5  # ~450 kB in 64 kB chunks
        assert all(len(p["data"]) <= 64 * 1024 for p in stages)
        assert [p["final"] for p in stages] == [False] * (len(stages) - 1) + [True]
    else:
        assert used["batch_stage"] == used["batch_collect"] == 0  # only submit and status crossed
        assert used["batch_status"] >= 1
    print(f"{mode}: 3000 lines in {elapsed:.1f} s; site calls {dict(used)}")


async def requeue_now(cluster: SlurmCluster, job_id: str) -> None:
    """Pre-empt the job as PreemptMode=REQUEUE would, and let it start again at once (Slurm holds a
    requeued job for ~2 minutes: its BeginTime)."""
    await asyncio.to_thread(subprocess.run, ["scontrol", "requeue", job_id], env=cluster.env, check=True)
    slurm = Slurm(env=cluster.env)
    deadline = time.monotonic() + 30
    while (job := await slurm.job(job_id)) is None or job.state is not JobState.PENDING:
        assert time.monotonic() < deadline, job
        await asyncio.sleep(0.1)
    update = ["scontrol", "update", f"JobId={job_id}", "StartTime=now"]
    await asyncio.to_thread(subprocess.run, update, env=cluster.env, check=True)


async def test_a_preempted_job_resumes_without_lost_or_repeated_lines(
    transport: BatchTransport, site_config: Path, slurm_cluster: SlurmCluster
) -> None:
    lines = make_lines(1500)
    spec = make_spec("preempted", len(lines), [])
    results = Results()
    ex = executor(transport, site_config, "slow-sim", concurrency=8)
    task = asyncio.ensure_future(ex.run(spec, lines, results.record, asyncio.Event()))
    await wait_recorded(results, 300, task)
    await requeue_now(slurm_cluster, spec.state["job_id"])
    await asyncio.wait_for(task, 90)

    assert_complete(results, lines)
    output = site_output(site_config, "preempted")
    assert len(output) == 1500
    assert set(output.values()) == {1}
    status = await wait_finished(transport, site_config, "preempted")
    assert (status["state"], status["restarts"], status["done"]) == ("finished", 1, 1500)
    state_dir = Path(yaml.safe_load(site_config.read_text())["state_dir"])
    log = next((state_dir / "logs").glob(f"*-{status['job_id']}.log")).read_text()
    resumed = re.search(r"1500 input lines, (\d+) already answered", log.split("DUE TO JOB REQUEUE")[1])
    assert resumed is not None, log
    assert 300 <= int(resumed.group(1)) < 1500  # the second run went on from the first one's output


async def test_a_gateway_restart_resumes_collecting_where_it_stopped(
    transport: BatchTransport, site_config: Path
) -> None:
    lines = make_lines(1500)
    saved: list[dict[str, Any]] = []
    results = Results()
    first = make_spec("restarted", len(lines), saved)
    stop = asyncio.Event()
    task = asyncio.ensure_future(
        executor(transport, site_config, "slow-sim", concurrency=8).run(first, lines, results.record, stop)
    )
    await wait_recorded(results, 300, task)
    stop.set()  # the replica shuts down; the job carries on
    started = time.monotonic()
    await asyncio.wait_for(task, 30)
    assert time.monotonic() - started < 5
    assert len(results.calls) < 1500
    assert saved[-1]["offset"] > 0

    # Another replica (a new executor, the state as the store kept it) picks the batch up.
    second = make_spec("restarted", len(lines), saved)
    second.state = dict(saved[-1])
    rest = [line for line in lines if line.line not in results.calls]
    ex = executor(transport, site_config, "slow-sim", concurrency=8)
    await asyncio.wait_for(ex.run(second, rest, results.record, asyncio.Event()), 90)
    assert_complete(results, lines)
    submits = [p for name, p in transport.calls if name == "batch_submit" and p["batch_id"] == "restarted"]
    assert len(submits) == 1  # the second replica only collected
    assert set(site_output(site_config, "restarted").values()) == {1}


async def test_cancel_stops_the_job_and_keeps_the_finished_lines(
    transport: BatchTransport, site_config: Path, slurm_cluster: SlurmCluster
) -> None:
    lines = make_lines(1500)
    spec = make_spec("cancelled", len(lines), [])
    results = Results()
    stop = asyncio.Event()
    ex = executor(transport, site_config, "slow-sim", concurrency=8)
    task = asyncio.ensure_future(ex.run(spec, lines, results.record, stop))
    await wait_recorded(results, 200, task)
    await ex.cancel(spec)
    stop.set()
    await asyncio.wait_for(task, 30)

    status = await wait_finished(transport, site_config, "cancelled")
    assert status["state"] == "cancelled"
    job = await Slurm(env=slurm_cluster.env).job(spec.state["job_id"])
    assert job is not None
    assert job.state.finished
    output = site_output(site_config, "cancelled")
    assert set(output.values()) == {1}
    assert 200 <= len(output) < 1500  # stopped early, finished lines kept
    recorded = {f"{line}:{r.custom_id}" for line, r in results.first.items()}
    assert recorded <= set(output)
    assert set(results.calls.values()) == {1}
    # What the job finished after the last collect is still there to collect.
    late = Results()
    await asyncio.wait_for(ex.run(spec, lines, late.record, asyncio.Event()), 30)
    assert {f"{line}:{r.custom_id}" for line, r in late.first.items()} | recorded == set(output)
    assert spec.state["job_failure"].startswith("the Slurm batch job")
