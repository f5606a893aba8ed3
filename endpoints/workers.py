"""Which engines run where: the worker life cycle at one site.

    PENDING (queued) → STARTING (job running, engine loading) → READY (health passes and a
    1-token probe answers) → DRAINING → GONE, or FAILED (with the reason from the job's log)

A worker is one Slurm job rendered from slurm/worker.sbatch.j2. Its state is derived, never
stored: from Slurm (squeue, then scontrol for finished jobs), the ready and draining files the
job writes (slurm/README.md), and probes of the engine. What is stored, one small JSON file per
worker under `state_dir/workers/`, is what cannot be derived: the model, the job id, where the
worker's key file is. Each worker gets its own random API key (file mode 0600), so nobody else
on the cluster can use its engine.

For the gateway's router and hot-node scheduler, a view also says when a running job's
walltime ends (`ends_at`), when Slurm expects a queued job to start (`starts_at`), and, for a
READY worker, the engine's load read from its Prometheus `/metrics` (`load`). A worker's
walltime is the model's in site.yaml, or a shorter one asked for when it is started.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from endpoints.engine_metrics import EngineLoad, metrics_url, parse_engine_load
from endpoints.engines.apptainer import apptainer_wrap
from endpoints.engines.base import WORKER_KEY_ENV, WORKER_PORT_ENV, EngineLaunch, EnvRef
from endpoints.engines.llamacpp import llamacpp_launch
from endpoints.engines.simulated import sim_launch
from endpoints.engines.vllm import ray_head_command, ray_worker_command, vllm_launch
from endpoints.protocol import WorkerState
from endpoints.site import ModelSpec, SiteConfig
from endpoints.slurm import JobInfo, JobState, Slurm, parse_duration
from endpoints.templates import render

_PROBE_TTL_S = 10.0  # a worker that answered a probe is trusted this long
_LOG_TAIL_LINES = 15
_LOAD_TIMEOUT_S = 3.0  # a status call waits at most this long for a worker's /metrics
_METRICS_MAX_BYTES = 4 * 1024 * 1024  # vLLM's page with all its histograms is a few hundred kB
_WALLTIME = re.compile(r"(?:[0-9]+-)?[0-9]{1,2}:[0-9]{2}:[0-9]{2}")  # [D-]HH:MM:SS, as SiteRequest says


class WorkerError(Exception):
    """A request about workers that cannot be done (unknown model or worker)."""


@dataclass(frozen=True)
class WorkerView:
    """One worker as the site sees it now; `to_wire()` is its entry in `SiteResult`."""

    worker_id: str
    model: str
    state: WorkerState
    job_id: str
    node: str | None = None
    base_url: str | None = None  # set once the engine listens
    api_key: str | None = None  # given to the gateway with the address, never logged
    reason: str | None = None
    created_at: str | None = None
    load: EngineLoad | None = None  # READY only, and only when its /metrics could be read
    ends_at: float | None = None  # unix seconds: the running job's start + its time limit
    starts_at: float | None = None  # unix seconds: Slurm's expected start of a PENDING job

    def to_wire(self) -> dict[str, Any]:
        """A plain JSON-able dict (it crosses Globus Compute's serialiser)."""
        data = asdict(self)
        data["state"] = self.state.value
        return data


def engine_launch(site: SiteConfig, model: str, spec: ModelSpec) -> EngineLaunch:
    """The engine's command line for `model`, wrapped in Apptainer when the site says so."""
    port = EnvRef(WORKER_PORT_ENV)
    host = "0.0.0.0"  # the gateway or the site's functions reach it from elsewhere
    launch: EngineLaunch
    if spec.engine == "vllm":
        launch = vllm_launch(
            spec.path or model, model, host, port, WORKER_KEY_ENV, tensor_parallel=spec.tensor_parallel,
            pipeline_parallel=spec.pipeline_parallel, max_model_len=spec.max_model_len, extra_args=spec.args,
            distributed=spec.nodes > 1,
        )  # fmt: skip
    elif spec.nodes > 1:
        raise WorkerError(f"model {model!r}: only vllm runs over several nodes")
    elif spec.engine == "llamacpp":
        if not spec.path:
            raise WorkerError(f"model {model!r}: llamacpp needs `path` (the .gguf file)")
        launch = llamacpp_launch(
            spec.path, model, host, port, WORKER_KEY_ENV, n_threads=spec.n_threads, extra_args=spec.args,
            python=site.python,
        )  # fmt: skip
    else:
        launch = sim_launch(
            model, host, port, WORKER_KEY_ENV, ttft_ms=spec.sim_ttft_ms, itl_ms=spec.sim_itl_ms,
            extra_args=spec.args, python=site.python,
        )  # fmt: skip
    c = site.containers
    if c.enabled:
        if not c.image:
            raise WorkerError("containers are enabled but containers.image is not set")
        launch = apptainer_wrap(launch, c.image, gpus=spec.gpus > 0, binds=c.binds, executable=c.executable)
    return launch


def worker_walltime(site_walltime: str, asked: object = None) -> str:
    """The walltime of a new worker job: `asked` ([D-]HH:MM:SS) when it is no longer than the
    model's `walltime` in site.yaml, else the site's: the site's admin sets the ceiling.

    A site walltime Slurm reads as no limit ("UNLIMITED") sets no ceiling here (the partition's
    MaxTime still does). An `asked` that is not [D-]HH:MM:SS, or is zero (to Slurm, no limit),
    is refused.
    """
    if asked is None:
        return site_walltime
    if not isinstance(asked, str) or not _WALLTIME.fullmatch(asked) or not parse_duration(asked):
        raise WorkerError(f"walltime {asked!r} is not a positive [D-]HH:MM:SS")
    ceiling = parse_duration(site_walltime)
    if ceiling is not None and (parse_duration(asked) or 0) > ceiling:
        return site_walltime
    return asked


def render_worker(
    site: SiteConfig, model: str, worker_id: str, key_file: Path, walltime: str | None = None
) -> str:
    """The exact batch script Hearth submits for one worker of `model`, for `walltime` if it
    is given and not longer than the site's (`worker_walltime`)."""
    spec = site.models.get(model)
    if spec is None:
        raise WorkerError(f"this site does not serve {model!r} (models: {', '.join(sorted(site.models))})")
    walltime = worker_walltime(spec.walltime, walltime)
    launch = engine_launch(site, model, spec)
    multinode: dict[str, Any] = {}
    if spec.nodes > 1:
        head, worker = ray_head_command(num_gpus=spec.gpus), ray_worker_command(num_gpus=spec.gpus)
        if site.containers.enabled and site.containers.image:
            head = apptainer_wrap(
                head, site.containers.image, gpus=spec.gpus > 0, binds=site.containers.binds
            )
            worker = apptainer_wrap(
                worker, site.containers.image, gpus=spec.gpus > 0, binds=site.containers.binds
            )
        multinode = {"nodes": spec.nodes, "gpus_per_node": spec.gpus, "cpus_per_node": spec.cpus,
                     "ray_head_command": head.shell(), "ray_worker_command": worker.shell()}  # fmt: skip
    context: dict[str, Any] = {
        "cluster": site.cluster, "model": model, "worker_id": worker_id, "walltime": walltime,
        "key_file": str(key_file), "ready_dir": str(site.ready_dir), "log_dir": str(site.logs_dir),
        "gpus": spec.gpus, "cpus": spec.cpus, "mem": spec.mem, "partition": site.partition,
        "account": site.account, "qos": site.qos, "setup": list(site.setup), "python": site.python,
        "drain_seconds": site.drain_seconds, "start_timeout": spec.start_timeout_s,
        **launch.template_context(),
    }  # fmt: skip
    if multinode:
        for key in ("gpus", "cpus"):
            context.pop(key)
        return render("worker-multinode", **context, **multinode)
    return render("worker", **context)


class Workers:
    def __init__(self, site: SiteConfig, slurm: Slurm | None = None) -> None:
        self.site = site
        self.slurm = slurm or Slurm(env=site.slurm_env)
        self._probed: dict[str, float] = {}

    async def start(self, model: str, walltime: str | None = None) -> WorkerView:
        """Submit a worker job for `model`; it starts PENDING. Its walltime is `walltime`
        ([D-]HH:MM:SS) capped at the model's in site.yaml, or the model's when not given."""
        for d in (self.site.state_dir, self.site.ready_dir, self.site.keys_dir, self.site.logs_dir,
                  self.site.workers_dir):  # fmt: skip
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        worker_id = "w" + secrets.token_hex(5)
        key_file = self.site.keys_dir / f"{worker_id}.key"
        script = render_worker(self.site, model, worker_id, key_file, walltime)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
        try:
            job_id = await self.slurm.submit(script)
        except BaseException:
            key_file.unlink(missing_ok=True)
            raise
        record = {"worker_id": worker_id, "model": model, "job_id": job_id, "key_file": str(key_file),
                  "created_at": datetime.now(UTC).isoformat(timespec="seconds")}  # fmt: skip
        path = self.site.workers_dir / f"{worker_id}.json"
        path.write_text(json.dumps(record))
        return await self.get(worker_id)

    async def stop(self, worker_id: str, *, drain: bool = True) -> WorkerView:
        """Drain (USR1 to the job's script: finish what runs, then stop) or cancel at once."""
        record = self._record(worker_id)
        if drain:
            await self.slurm.cancel(record["job_id"], signal="USR1", batch=True)
        else:
            await self.slurm.cancel(record["job_id"])
        return await self.get(worker_id)

    async def get(self, worker_id: str) -> WorkerView:
        record = self._record(worker_id)
        job = await self.slurm.job(record["job_id"])
        return (await _with_load([await self._view(record, job)]))[0]

    async def list(self) -> list[WorkerView]:
        """Every worker with a record here, READY ones with their address, key and load."""
        records = [json.loads(p.read_text()) for p in sorted(self.site.workers_dir.glob("*.json"))]
        if not records:
            return []
        jobs = {
            j.job_id: j for j in await self.slurm.jobs([r["job_id"] for r in records], include_finished=True)
        }
        views = []
        for r in records:
            job = jobs.get(r["job_id"]) or await self.slurm.job(r["job_id"])
            views.append(await self._view(r, job))
        return await _with_load(views)

    def forget(self, worker_id: str) -> None:
        """Drop a GONE or FAILED worker's record and key."""
        record = self._record(worker_id)
        Path(record["key_file"]).unlink(missing_ok=True)
        (self.site.workers_dir / f"{worker_id}.json").unlink(missing_ok=True)

    def _record(self, worker_id: str) -> dict[str, str]:
        path = self.site.workers_dir / f"{worker_id}.json"
        if not worker_id.isalnum() or not path.exists():
            raise WorkerError(f"no worker {worker_id!r} at this site")
        data: dict[str, str] = json.loads(path.read_text())
        return data

    async def _view(self, record: dict[str, str], job: JobInfo | None) -> WorkerView:
        view, base_url, key = self._local_view(record, job)
        if base_url is None or key is None:
            return view
        problem = await self._probe(record["worker_id"], record["model"], base_url, key)
        if problem is not None:
            return replace(view, state=WorkerState.STARTING, base_url=base_url, reason=problem)
        return replace(view, state=WorkerState.READY, base_url=base_url, api_key=key, reason=None)

    def _local_view(
        self, record: dict[str, str], job: JobInfo | None
    ) -> tuple[WorkerView, str | None, str | None]:
        """The state as far as Slurm and the job's files tell (no probe); for a job that says it
        listens, also its base URL and key, to probe."""
        ends_at, starts_at = _job_times(job)
        view = WorkerView(
            worker_id=record["worker_id"], model=record["model"], job_id=record["job_id"],
            created_at=record.get("created_at"), state=WorkerState.GONE,
            node=job.node if job is not None else None, ends_at=ends_at, starts_at=starts_at,
        )  # fmt: skip
        if job is None:
            if record.get("final_state"):  # what was seen when the job ended, before Slurm forgot it
                return (
                    replace(view, state=WorkerState(record["final_state"]), reason=record.get("reason")),
                    None,
                    None,
                )
            return replace(view, reason="Slurm no longer knows the job"), None, None
        if job.state is JobState.PENDING:
            return replace(view, state=WorkerState.PENDING, reason=job.reason), None, None
        if job.state.finished:
            if job.state is JobState.CANCELLED or (job.state is JobState.COMPLETED and not job.exit_code):
                ended = replace(view, reason=job.slurm_state.lower())
            else:
                why = self._log_tail(job) or job.slurm_state
                ended = replace(view, state=WorkerState.FAILED, reason=f"{job.slurm_state}: {why}")
            self._remember_end(record, ended)
            return ended, None, None
        ready = self.site.ready_dir / f"{job.job_id}.ready.json"
        if (self.site.ready_dir / f"{job.job_id}.draining.json").exists():
            return replace(view, state=WorkerState.DRAINING), None, None
        starting = replace(view, state=WorkerState.STARTING, reason="the engine is loading")
        if not ready.exists():
            return starting, None, None
        try:
            info = json.loads(ready.read_text())
            base_url = f"http://{info['host']}:{int(info['port'])}/v1"
        except (OSError, ValueError, KeyError):
            return starting, None, None
        return starting, base_url, Path(record["key_file"]).read_text().strip()

    async def _probe(self, worker_id: str, model: str, base_url: str, key: str) -> str | None:
        """None if the engine does work (a 1-token completion answers), else what is wrong."""
        if time.monotonic() - self._probed.get(worker_id, -1e9) < _PROBE_TTL_S:
            return None
        problem = await asyncio.to_thread(_one_token, base_url, model, key)
        if problem is None:
            self._probed[worker_id] = time.monotonic()
        return problem

    def _remember_end(self, record: dict[str, str], ended: WorkerView) -> None:
        """Keep how the job ended: Slurm forgets finished jobs after MinJobAge."""
        if record.get("final_state") == ended.state.value:
            return
        record = {**record, "final_state": ended.state.value, "reason": ended.reason or ""}
        (self.site.workers_dir / f"{record['worker_id']}.json").write_text(json.dumps(record))

    def _log_tail(self, job: JobInfo) -> str:
        """The job log's last lines, Hearth's own messages first: why a worker failed."""
        for log in self.site.logs_dir.glob(f"*-{job.job_id}.log"):
            lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
            hearth = [ln for ln in lines if "hearth" in ln.lower()]
            return " | ".join((hearth or lines)[-3:])[-800:] if lines else ""
        return ""


async def _with_load(views: Sequence[WorkerView]) -> list[WorkerView]:
    """The views, READY ones with their engine's load. The /metrics reads run concurrently, so
    a status call waits for the slowest worker, at most `_LOAD_TIMEOUT_S`, not their sum."""
    ready = [i for i, v in enumerate(views) if v.state is WorkerState.READY and v.base_url]
    loads = await asyncio.gather(
        *(asyncio.to_thread(read_load, views[i].base_url or "", views[i].api_key) for i in ready)
    )
    loaded = [*views]
    for i, load in zip(ready, loads, strict=True):
        loaded[i] = replace(views[i], load=load)
    return loaded


def _job_times(job: JobInfo | None) -> tuple[float | None, float | None]:
    """(`ends_at`, `starts_at`) as unix seconds: when a running job's walltime ends (its start +
    its time limit), and when Slurm expects a pending job to start (once its scheduler has a
    guess; squeue's "N/A" is None). None when unknown or not applicable."""
    if job is None or job.start_time is None:
        return None, None
    start = job.start_time.timestamp()
    if job.state is JobState.PENDING:
        return None, start
    if job.state in (JobState.RUNNING, JobState.COMPLETING) and job.time_limit_s is not None:
        return start + job.time_limit_s, None
    return None, None


def read_load(base_url: str, key: str | None, timeout_s: float = _LOAD_TIMEOUT_S) -> EngineLoad | None:
    """The engine's load from its Prometheus `/metrics` (beside its OpenAI `base_url`), asked
    with the worker's key; None when it cannot be read (no answer, not 200, not an engine's
    page): the load is advice for the router, never a reason for a status call to fail."""
    parts = urlsplit(metrics_url(base_url))
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=timeout_s)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        conn.request("GET", parts.path, headers=headers)
        resp = conn.getresponse()
        body = resp.read(_METRICS_MAX_BYTES)
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()
    return parse_engine_load(body.decode("utf-8", "replace")) if resp.status == 200 else None


def _one_token(base_url: str, model: str, key: str) -> str | None:
    parts = urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    body = json.dumps({"model": model, "prompt": "ping", "max_tokens": 1})
    try:
        conn.request("POST", f"{parts.path}/completions", body,
                     {"Content-Type": "application/json", "Authorization": f"Bearer {key}"})  # fmt: skip
        resp = conn.getresponse()
        resp.read()
    except (OSError, http.client.HTTPException) as exc:
        return f"the engine does not answer yet ({type(exc).__name__})"
    finally:
        conn.close()
    return None if resp.status == 200 else f"the engine's 1-token probe answered HTTP {resp.status}"
