"""endpoints/workers.py without a cluster: an engine's load read from a real sim engine's
/metrics, the walltime a worker job is rendered with, and the job times a view carries."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from endpoints.protocol import WorkerState
from endpoints.site import SiteConfig
from endpoints.slurm import SQUEUE_FORMAT, CommandResult, Slurm
from endpoints.workers import WorkerError, Workers, read_load, render_worker, worker_walltime
from tests.support.gateway import Sim
from tests.support.procs import free_port
from tests.support.threaded_server import ThreadedServer

# -- the engine's load ------------------------------------------------------------------------


def test_load_of_a_running_sim_engine(sim: Sim) -> None:
    before = read_load(sim.url, sim.api_key)
    assert before is not None
    assert isinstance(before["running"], int)
    assert isinstance(before["waiting"], int)
    assert before["kv_cache"] is not None
    assert before["generated_tokens"] is not None
    reply = httpx.post(
        f"{sim.url}/completions",
        json={"model": sim.model, "prompt": "hi", "max_tokens": 7},
        headers={"Authorization": f"Bearer {sim.api_key}"},
    )
    assert reply.status_code == 200
    after = read_load(sim.url, sim.api_key)
    assert after is not None
    assert after["generated_tokens"] is not None
    assert after["generated_tokens"] >= before["generated_tokens"] + 7  # the counter moves with work


def test_no_load_from_a_closed_port() -> None:
    assert read_load(f"http://127.0.0.1:{free_port()}/v1", "any-key", timeout_s=1.0) is None


class KeyGuard:
    """The real sim's /metrics behind a check of the worker key, the way an engine that guards
    its metrics (llama.cpp's server) or a site proxy answers: 401 without the right key."""

    def __init__(self, sim: Sim) -> None:
        self.sim = sim

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        given = dict(scope["headers"]).get(b"authorization", b"")
        if scope["path"] != "/metrics" or given != f"Bearer {self.sim.api_key}".encode():
            status, body = 401, b'{"error": "Unauthorized"}'
        else:
            async with httpx.AsyncClient() as client:
                upstream = await client.get(f"{self.sim.root}/metrics")
            status, body = upstream.status_code, upstream.content
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"text/plain")]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})


def test_the_worker_key_is_sent_and_a_refusal_is_no_load(sim: Sim) -> None:
    guard = ThreadedServer(KeyGuard(sim)).start()
    try:
        base_url = f"{guard.url}/v1"
        assert read_load(base_url, "not-the-key") is None  # 401
        assert read_load(base_url, None) is None  # 401
        load = read_load(base_url, sim.api_key)
        assert load is not None
        assert load["generated_tokens"] is not None
    finally:
        guard.stop()


# -- the walltime of a worker job -------------------------------------------------------------


def site_config(tmp_path: Path, walltime: str = "01:00:00") -> SiteConfig:
    return SiteConfig.model_validate(
        {
            "cluster": "delta",
            "state_dir": str(tmp_path),
            "python": sys.executable,
            "models": {"sim-model": {"engine": "sim", "walltime": walltime}},
        }
    )


def time_directives(script: str) -> list[str]:
    return [ln for ln in script.splitlines() if ln.startswith("#SBATCH --time=")]


@pytest.mark.parametrize(
    ("asked", "rendered"),
    [
        ("00:30:00", "00:30:00"),  # shorter: as asked
        ("01:00:00", "01:00:00"),  # equal
        ("0-00:45:00", "0-00:45:00"),  # shorter, with days
        ("01:00:01", "01:00:00"),  # longer: the site's
        ("2-00:00:00", "01:00:00"),
        (None, "01:00:00"),  # absent: the site's
    ],
)
def test_walltime_is_capped_at_the_sites(tmp_path: Path, asked: str | None, rendered: str) -> None:
    script = render_worker(site_config(tmp_path), "sim-model", "w0000000000", tmp_path / "k.key", asked)
    assert time_directives(script) == [f"#SBATCH --time={rendered}"]


def test_a_site_without_a_limit_takes_the_walltime_asked_for(tmp_path: Path) -> None:
    site = site_config(tmp_path, walltime="UNLIMITED")
    script = render_worker(site, "sim-model", "w0000000000", tmp_path / "k.key", "12:00:00")
    assert time_directives(script) == ["#SBATCH --time=12:00:00"]


@pytest.mark.parametrize(
    "asked", ["soon", "90", "1:00", "00:00:00", "01:00:00\n#SBATCH --x", "-01:00:00", 3600]
)
def test_a_walltime_that_is_not_hh_mm_ss_is_refused(asked: object) -> None:
    with pytest.raises(WorkerError, match="walltime"):
        worker_walltime("04:00:00", asked)


# -- when a job ends, when a queued one starts ------------------------------------------------


class CannedSqueue:
    """The Runner seam of endpoints.slurm: answers squeue with fixed rows in SQUEUE_FORMAT."""

    def __init__(self, rows: Sequence[str]) -> None:
        self.rows = rows

    async def __call__(
        self, argv: Sequence[str], *, stdin: str | None, env: Mapping[str, str]
    ) -> CommandResult:
        assert argv[0] == "squeue"
        assert f"--format={SQUEUE_FORMAT}" in argv
        return CommandResult(0, "".join(row + "\n" for row in self.rows), "")


def local_ts(text: str) -> float:
    return datetime.fromisoformat(text).astimezone().timestamp()  # Slurm prints local time


async def test_views_say_when_jobs_end_and_start(tmp_path: Path) -> None:
    site = site_config(tmp_path)
    site.workers_dir.mkdir(parents=True)
    for worker_id, job_id in (("wrun", "11"), ("wplanned", "12"), ("wunplanned", "13")):
        record = {"worker_id": worker_id, "model": "sim-model", "job_id": job_id,
                  "key_file": str(tmp_path / f"{worker_id}.key")}  # fmt: skip
        (site.workers_dir / f"{worker_id}.json").write_text(json.dumps(record))
    squeue = CannedSqueue([
        "11|RUNNING|None|node1|debug|5:00|1:00:00|2026-03-01T10:00:00|hearth-delta-sim-model-wrun",
        "12|PENDING|Resources|||0:00|30:00|2026-03-01T12:30:00|hearth-delta-sim-model-wplanned",
        "13|PENDING|Priority|||0:00|30:00|N/A|hearth-delta-sim-model-wunplanned",
    ])  # fmt: skip
    views = {v.worker_id: v for v in await Workers(site, Slurm(runner=squeue)).list()}

    running = views["wrun"]
    assert running.state is WorkerState.STARTING  # no ready file: the engine is loading
    assert running.ends_at == local_ts("2026-03-01T10:00:00") + 3600
    assert running.starts_at is None
    assert running.load is None  # only READY workers have a load
    assert views["wplanned"].state is WorkerState.PENDING
    assert views["wplanned"].starts_at == local_ts("2026-03-01T12:30:00")
    assert views["wplanned"].ends_at is None
    assert views["wunplanned"].starts_at is None  # Slurm has no guess yet
    wire = running.to_wire()
    assert json.loads(json.dumps(wire)) == wire  # it crosses Globus Compute's serialiser
    assert {"load", "ends_at", "starts_at"} <= wire.keys()
