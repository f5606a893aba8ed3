"""endpoints/slurm.py against real Slurm: the session's single-node clusters (tests/support/slurm.py)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from pathlib import Path

import pytest

from endpoints.slurm import JobInfo, JobState, Slurm, SlurmError
from tests.support.slurm import SlurmCluster

HOSTNAME = socket.gethostname().split(".")[0]


def client(cluster: SlurmCluster) -> Slurm:
    return Slurm(env={"SLURM_CONF": str(cluster.conf_path)}, timeout_s=20)


def script(body: str, output: Path) -> str:
    return f"#!/bin/bash\n#SBATCH --output={output}\n#SBATCH --cpus-per-task=1\n{body}\n"


def marker() -> str:
    """A sleep duration no other process on the machine has in its argv."""
    return f"{300 + random.random():.9f}"


async def wait_processes(arg: str, present: bool, timeout_s: float = 10.0) -> None:
    """Wait until a process with `arg` in its argv exists (or, with present=False, none does)."""
    deadline = time.monotonic() + timeout_s
    while bool(processes_with(arg)) is not present:
        assert time.monotonic() < deadline, (
            f"process with {arg!r} {'never started' if present else 'still runs'}"
        )
        await asyncio.sleep(0.05)


def processes_with(arg: str) -> list[int]:
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if arg.encode() in (proc / "cmdline").read_bytes().split(b"\0"):
                found.append(int(proc.name))
    return found


async def wait_for(slurm: Slurm, job_id: str, *states: JobState, timeout_s: float = 20.0) -> list[JobInfo]:
    """Poll job() until the job reaches one of `states`; every distinct report on the way."""
    seen: list[JobInfo] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = await slurm.job(job_id)
        assert job is not None, f"slurmctld forgot job {job_id}"
        if not seen or seen[-1].state is not job.state:
            seen.append(job)
        if job.state in states:
            return seen
        await asyncio.sleep(0.1)
    raise AssertionError(f"job {job_id} never reached {states}; saw {[j.state for j in seen]}")


async def wait_quiet(slurm: Slurm, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while await slurm.jobs():
        assert time.monotonic() < deadline, f"jobs still active: {await slurm.jobs()}"
        await asyncio.sleep(0.1)


async def test_a_job_runs_to_completion(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    slurm = client(slurm_cluster)
    out = tmp_path / "ok.out"
    job_id = await slurm.submit(
        script('echo "hello from $SLURM_JOB_ID on $SLURM_CLUSTER_NAME"; sleep 1', out), job_name="hearth-ok"
    )
    assert job_id.isdigit()
    seen = await wait_for(slurm, job_id, JobState.COMPLETED, JobState.FAILED)
    states = [j.state for j in seen]
    assert states[0] in (JobState.PENDING, JobState.RUNNING), states
    assert JobState.RUNNING in states
    done = seen[-1]
    assert done.state is JobState.COMPLETED
    assert (done.job_id, done.name, done.exit_code, done.exit_signal) == (job_id, "hearth-ok", 0, 0)
    assert (done.node, done.partition) == (HOSTNAME, slurm_cluster.partition)
    assert done.time_used_s is not None
    assert done.time_used_s >= 1
    assert done.start_time is not None
    assert out.read_text() == f"hello from {job_id} on {slurm_cluster.name}\n"
    # Accounting is off on the test cluster: sacct has nothing, and says so without failing.
    assert await slurm.accounting([job_id]) == []


async def test_a_failing_script_is_failed_with_its_exit_code(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    slurm = client(slurm_cluster)
    job_id = await slurm.submit(
        script("echo oops >&2; exit 3", tmp_path / "fail.out"), job_name="hearth-fail"
    )
    done = (await wait_for(slurm, job_id, JobState.FAILED, JobState.COMPLETED))[-1]
    assert (done.state, done.exit_code, done.reason) == (JobState.FAILED, 3, "NonZeroExitCode")


async def test_cancel_ends_the_job_and_its_processes(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    slurm = client(slurm_cluster)
    sleep_for = marker()
    job_id = await slurm.submit(
        script(f"exec sleep {sleep_for}", tmp_path / "c.out"), job_name="hearth-cancel"
    )
    await wait_for(slurm, job_id, JobState.RUNNING)
    await wait_processes(sleep_for, present=True)  # RUNNING comes a moment before the script starts
    await slurm.cancel(job_id)
    done = (await wait_for(slurm, job_id, JobState.CANCELLED))[-1]
    assert done.exit_signal == 15
    await slurm.cancel(job_id)  # already gone: not an error
    await slurm.cancel("987654")  # never existed: not an error either
    await wait_processes(sleep_for, present=False)


async def test_a_refused_submission_names_the_reason(slurm_cluster: SlurmCluster) -> None:
    slurm = client(slurm_cluster)
    with pytest.raises(SlurmError) as caught:
        await slurm.submit("#!/bin/bash\ntrue\n", extra_args=["--partition=no-such-partition"])
    assert caught.value.reason == "Batch job submission failed: Invalid partition name specified"
    assert "invalid partition specified: no-such-partition" in str(caught.value)
    assert str(slurm_cluster.conf_path) in str(caught.value)
    with pytest.raises(SlurmError, match="does not look like a batch script"):
        await slurm.submit("true\n")


async def test_unknown_job_is_none(slurm_cluster: SlurmCluster) -> None:
    slurm = client(slurm_cluster)
    assert await slurm.job("987654") is None
    assert await slurm.jobs(["987654"]) == []


async def test_nodes_and_side_by_side_jobs(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """The node advertises 4 CPUs on a 2-core machine, so four 1-CPU jobs run at once."""
    slurm = client(slurm_cluster)
    await wait_quiet(slurm)
    (node,) = await slurm.nodes()
    assert (node.name, node.partition, node.cpus, node.cpus_alloc) == (
        HOSTNAME,
        slurm_cluster.partition,
        4,
        0,
    )
    assert node.state == "idle"
    assert await slurm.free_nodes() == 1
    assert await slurm.free_nodes(slurm_cluster.partition) == 1

    prefix = f"hearth-many-{random.randrange(10**6)}-"
    ids = [
        await slurm.submit(script("sleep 300", tmp_path / f"{i}.out"), job_name=f"{prefix}{i}")
        for i in range(4)
    ]
    try:
        for job_id in ids:
            await wait_for(slurm, job_id, JobState.RUNNING)
        listed = await slurm.jobs(name_prefix=prefix)
        assert sorted(j.job_id for j in listed) == sorted(ids)
        assert {j.state for j in listed} == {JobState.RUNNING}
        assert sorted(j.job_id for j in await slurm.jobs(ids[:2])) == sorted(ids[:2])
        (node,) = await slurm.nodes()
        assert (node.state, node.cpus_alloc, node.cpus_idle) == ("allocated", 4, 0)
        assert await slurm.free_nodes() == 0
    finally:
        for job_id in ids:
            await slurm.cancel(job_id)
    for job_id in ids:
        await wait_for(slurm, job_id, JobState.CANCELLED)


async def test_a_restarted_controller_keeps_its_jobs(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    slurm = client(slurm_cluster)
    job_id = await slurm.submit(script("sleep 300", tmp_path / "r.out"), job_name="hearth-restart")
    await wait_for(slurm, job_id, JobState.RUNNING)
    slurm_cluster.stop_controller()
    slurm_cluster.start_controller()
    job = await slurm.job(job_id)
    assert job is not None
    assert job.state is JobState.RUNNING
    await slurm.cancel(job_id)
    await wait_for(slurm, job_id, JobState.CANCELLED)


async def test_two_clusters_side_by_side(
    slurm_clusters: tuple[SlurmCluster, SlurmCluster], tmp_path: Path
) -> None:
    a, b = slurm_clusters
    assert a.name != b.name
    assert {a.ctld_port, a.slurmd_port}.isdisjoint({b.ctld_port, b.slurmd_port})
    submitted = []
    for cluster in (a, b):
        out = tmp_path / f"{cluster.name}.out"
        job_id = await client(cluster).submit(
            script('echo "$SLURM_CLUSTER_NAME"', out), job_name="hearth-fed"
        )
        submitted.append((cluster, job_id, out))
    for cluster, job_id, out in submitted:
        done = (await wait_for(client(cluster), job_id, JobState.COMPLETED, JobState.FAILED))[-1]
        assert done.state is JobState.COMPLETED
        assert out.read_text() == f"{cluster.name}\n"
    assert await client(b).free_nodes() == 1


async def test_stop_leaves_nothing_running(tmp_path: Path) -> None:
    """A cluster of its own: stop() ends the daemons and a job that is still running."""
    sleep_for = marker()
    with SlurmCluster(tmp_path / "c", name="hearth-c") as cluster:
        slurm = client(cluster)
        job_id = await slurm.submit(script(f"exec sleep {sleep_for}", tmp_path / "stop.out"))
        await wait_for(slurm, job_id, JobState.RUNNING)
        await wait_processes(sleep_for, present=True)
        daemons = [p for p in (cluster._ctld, cluster._slurmd) if p is not None]
        assert len(daemons) == 2
    assert all(p.poll() is not None for p in daemons)
    assert processes_with(sleep_for) == []
    needle = f"SLURM_CONF={cluster.conf_path}".encode()
    leftovers = []
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if "State:\tZ" in (proc / "status").read_text():
                continue  # a zombie is already dead (PID 1 here does not always reap)
            if needle in (proc / "environ").read_bytes().split(b"\0"):
                leftovers.append(proc.name)
    assert leftovers == []
