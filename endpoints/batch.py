"""Offline batch jobs at a site: the Slurm side of the Batch API's large batches.

A batch job is one Slurm job rendered from slurm/batch.sbatch.j2 that runs one command over an
input file into an output file, requeued when it is pre-empted or reaches its time limit, and
keeping `status.json` current (slurm/README.md). For a model of the site config the command is
Hearth's runner (`endpoints.batch_runner`), which starts the model's engine inside the job (the
same engine command a worker runs, `endpoints.workers.engine_launch`, in Apptainer when the site
says so), waits until it answers, runs every input line through it, resumes where a previous run
stopped, and stops the engine. Admins and tests may also give a shell command of their own.

Everything of one batch lives in `<state_dir>/batches/<batch_id>/` (`BatchPaths`; the names are
`endpoints.batch_protocol`'s); `<state_dir>/batches/<batch_id>.json` records the job.

Why not `vllm run-batch`: it keeps no checkpoint and opens its output file for writing (which
empties it) each time it starts, so a requeued job would redo every line and wipe the lines the
gateway is collecting by offset. Hearth's runner against `vllm serve` resumes instead, and gives
vLLM the same continuous batching (docs/admin/batch.md says how to swap the command anyway).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from endpoints.batch_protocol import (
    INPUT_NAME,
    MAX_STAGE_BYTES,
    OUTPUT_NAME,
    PROGRESS_NAME,
    STATUS_NAME,
    BatchJobWire,
    OutputChunk,
    StagedInput,
    fsync_dir,
    read_progress,
    read_whole_lines,
)
from endpoints.engines.base import Command, EnvRef, Word, option
from endpoints.site import SiteConfig
from endpoints.slurm import JobState, Slurm, SlurmError
from endpoints.templates import render
from endpoints.workers import WorkerError, engine_launch

__all__ = ["DEFAULT_CONCURRENCY", "BatchError", "BatchJob", "BatchJobs", "BatchPaths", "batch_command"]

DEFAULT_CONCURRENCY = 64  # requests in flight in a batch job (vLLM batches them itself)
_MAX_PARTS = 100_000
_LOG_TAIL_LINES = 3


class BatchError(Exception):
    """A request about batch jobs that cannot be done (bad id, unknown batch or model)."""


@dataclass(frozen=True)
class BatchPaths:
    """Where one batch's files are at the site."""

    dir: Path  # also the job's checkpoint directory ($HEARTH_CHECKPOINT_DIR)
    input: Path
    output: Path
    progress: Path
    status: Path
    parts: Path  # staged input chunks, until they are joined into `input`

    @classmethod
    def of(cls, batch_dir: Path) -> BatchPaths:
        return cls(dir=batch_dir, input=batch_dir / INPUT_NAME, output=batch_dir / OUTPUT_NAME,
                   progress=batch_dir / PROGRESS_NAME, status=batch_dir / STATUS_NAME,
                   parts=batch_dir / "input.parts")  # fmt: skip


@dataclass(frozen=True)
class BatchJob:
    batch_id: str
    job_id: str
    state: str  # the job script's own status ("running", "finished", "failed", …) or Slurm's
    slurm_state: str
    exit_status: int | None
    restarts: int
    checkpoint_dir: str
    finished: bool = False  # the job will write nothing more
    done: int | None = None  # output lines so far (Hearth's runner only)
    total: int | None = None
    reason: str | None = None  # why a finished job did not finish its work

    def to_wire(self) -> dict[str, Any]:
        """The job as `endpoints.batch_protocol.BatchJobWire` (a plain dict, as `SiteResult` wants)."""
        wire: BatchJobWire = {
            "batch_id": self.batch_id, "job_id": self.job_id, "state": self.state,
            "slurm_state": self.slurm_state, "exit_status": self.exit_status, "restarts": self.restarts,
            "checkpoint_dir": self.checkpoint_dir, "finished": self.finished, "done": self.done,
            "total": self.total,
        }  # fmt: skip
        if self.reason is not None:
            wire["reason"] = self.reason
        return dict(wire)


def batch_command(
    site: SiteConfig, model: str, paths: BatchPaths, *, concurrency: int = DEFAULT_CONCURRENCY
) -> str:
    """The job's command line for `model`: Hearth's runner, starting the model's engine itself.

    The input and output are the job script's `$HEARTH_BATCH_INPUT` / `$HEARTH_BATCH_OUTPUT`;
    the engine's command line is one argument, kept literal for the runner's own `bash -c`,
    where its `"${HEARTH_WORKER_PORT}"` and `"${HEARTH_WORKER_KEY}"` expand to what the runner
    picked.
    """
    spec = site.models.get(model)
    if spec is None:
        raise BatchError(f"this site does not serve {model!r} (models: {', '.join(sorted(site.models))})")
    if spec.nodes > 1:
        raise BatchError(f"model {model!r} spans {spec.nodes} nodes; batch jobs run one node's engine")
    if isinstance(concurrency, bool) or not 1 <= concurrency <= 4096:
        raise BatchError(f"concurrency must be between 1 and 4096, got {concurrency!r}")
    try:
        launch = engine_launch(site, model, spec)
    except WorkerError as exc:
        raise BatchError(str(exc)) from exc
    argv: list[Word] = [
        site.python, "-m", "endpoints.batch_runner",
        option("--input", EnvRef("HEARTH_BATCH_INPUT")), option("--output", EnvRef("HEARTH_BATCH_OUTPUT")),
        option("--progress", str(paths.progress)), option("--served-model", model),
        option("--concurrency", concurrency), option("--engine-health", launch.health_path),
        option("--engine-start-timeout", spec.start_timeout_s),
    ]  # fmt: skip
    return f"{Command(tuple(argv)).shell()} {_literal('--engine-command=' + launch.shell())}"


def _literal(text: str) -> str:
    """One shell word, in double quotes with `\\ " $` and backquotes escaped: as inert as
    `shlex.quote`, and without shellcheck's SC2016 note on `${...}` kept for a later shell."""
    return '"' + re.sub(r'([\\"$`])', r"\\\1", text) + '"'


class BatchJobs:
    def __init__(self, site: SiteConfig, slurm: Slurm | None = None) -> None:
        self.site = site
        self.slurm = slurm or Slurm(env=site.slurm_env)

    @property
    def _dir(self) -> Path:
        return self.site.state_dir / "batches"

    def paths(self, batch_id: str) -> BatchPaths:
        _check_id(batch_id)
        return BatchPaths.of(self._dir / batch_id)

    def render(self, batch_id: str, command: str, input_path: str, output_path: str, **resources: Any) -> str:
        _check_id(batch_id)
        context: dict[str, Any] = {
            "cluster": self.site.cluster, "batch_id": batch_id, "command": command,
            "input_path": input_path, "output_path": output_path,
            "checkpoint_dir": str(self._dir / batch_id), "log_dir": str(self.site.logs_dir),
            "partition": self.site.partition, "account": self.site.account, "qos": self.site.qos,
            "setup": list(self.site.setup), "walltime": resources.pop("walltime", "04:00:00"), **resources,
        }  # fmt: skip
        return render("batch", **context)

    def render_model(self, batch_id: str, model: str, *, concurrency: int = DEFAULT_CONCURRENCY) -> str:
        """The exact script Hearth submits for a batch of `model` (resources from its site entry)."""
        paths = self.paths(batch_id)
        command = batch_command(self.site, model, paths, concurrency=concurrency)
        spec = self.site.models[model]
        return self.render(
            batch_id, command, str(paths.input), str(paths.output), walltime=spec.walltime,
            gpus=spec.gpus, cpus=spec.cpus, mem=spec.mem, drain_seconds=self.site.drain_seconds,
        )  # fmt: skip

    async def submit(
        self,
        batch_id: str,
        command: str | None = None,
        input_path: str | None = None,
        output_path: str | None = None,
        *,
        model: str | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        **resources: Any,
    ) -> BatchJob:
        """Submit the batch job: Hearth's runner for `model` over the batch's staged input, or
        `command` over `input_path` into `output_path`.

        Submitting the same batch again (same model, or same command) returns the job already
        submitted, so a caller that crashed before it kept the job id can ask again; anything
        else for a batch id already used is refused.
        """
        if (command is None) == (model is None):
            raise BatchError("give either a command or a model")
        paths = self.paths(batch_id)
        if model is not None:
            if input_path is not None or output_path is not None:
                raise BatchError("a model's batch job uses the batch's own input and output")
            script = self.render_model(batch_id, model, concurrency=concurrency)
            what = {"model": model}
        else:
            if input_path is None or output_path is None:
                raise BatchError("a command needs input_path and output_path")
            assert command is not None
            script = self.render(batch_id, command, input_path, output_path, **resources)
            what = {"command": command}
        for d in (self.site.state_dir, self._dir, paths.dir, self.site.logs_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self._locked(batch_id):
            record = self._read_record(batch_id)
            if record is not None:
                if all(record.get(k) == v for k, v in what.items()):
                    return await self.status(batch_id)
                raise BatchError(f"batch {batch_id!r} was already submitted at this site")
            if model is not None and not paths.input.is_file():
                raise BatchError(f"the input of batch {batch_id!r} is not staged (batch_stage it first)")
            job_id = await self.slurm.submit(script)
            created = datetime.now(UTC).isoformat(timespec="seconds")
            self._write_record(
                batch_id, {"batch_id": batch_id, "job_id": job_id, **what, "created_at": created}
            )
        return await self.status(batch_id)

    async def status(self, batch_id: str) -> BatchJob:
        record = self._record(batch_id)
        paths = self.paths(batch_id)
        job = await self.slurm.job(record["job_id"])
        try:
            status: dict[str, Any] = json.loads(paths.status.read_text())
        except (OSError, ValueError):
            status = {}
        progress = read_progress(paths.progress)
        finished = job is None or job.state.finished
        slurm_state = job.state.value if job is not None else "gone"
        state = status.get("state") or (
            "pending" if job is not None and job.state is JobState.PENDING else slurm_state
        )
        if job is not None and job.state is JobState.PENDING and state in ("stopped", "failed", "finished"):
            state = "requeued"  # back in the queue after a pre-emption or `scontrol requeue`
        if finished and record.get("cancelled"):
            state = "cancelled"
        exit_status = status.get("exit_status")
        if exit_status is None and finished and job is not None:
            exit_status = job.exit_code
        reason = None
        if finished and state != "finished":
            reason = self._log_tail(record["job_id"]) or (job.slurm_state if job else "Slurm forgot the job")
        return BatchJob(
            batch_id=batch_id, job_id=record["job_id"], state=state, slurm_state=slurm_state,
            exit_status=exit_status, restarts=int(status.get("restarts") or 0), checkpoint_dir=str(paths.dir),
            finished=finished, done=progress["done"] if progress else None,
            total=progress["total"] if progress else None, reason=reason,
        )  # fmt: skip

    async def cancel(self, batch_id: str) -> BatchJob:
        """Stop the job, keeping what it finished: a running job's script gets TERM (it asks the
        command to checkpoint, slurm/README.md); a job still queued is simply cancelled."""
        current = await self.status(batch_id)
        if current.finished:
            return current
        with self._locked(batch_id):
            record = self._record(batch_id)
            self._write_record(batch_id, {**record, "cancelled": True})
        if current.slurm_state == JobState.PENDING.value:
            await self.slurm.cancel(current.job_id)
        else:
            try:
                await self.slurm.cancel(current.job_id, signal="TERM", batch=True)
            except SlurmError:  # it went back to the queue meanwhile: nothing to checkpoint
                await self.slurm.cancel(current.job_id)
        return await self.status(batch_id)

    # -- input and output ----------------------------------------------------------------------

    def stage(self, batch_id: str, part: int, data: bytes, final: bool) -> StagedInput:
        """Keep one chunk of the input; with `final`, join parts 0..part into the input file.

        A part sent again replaces itself (atomically), so retries never duplicate input. Once
        the input is joined (or the job submitted), the input is fixed and parts are ignored.
        """
        paths = self.paths(batch_id)
        if isinstance(part, bool) or not isinstance(part, int) or not 0 <= part < _MAX_PARTS:
            raise BatchError(f"part must be an integer from 0 to {_MAX_PARTS - 1}, got {part!r}")
        if len(data) > MAX_STAGE_BYTES:
            raise BatchError(f"a staged part may hold at most {MAX_STAGE_BYTES} bytes, got {len(data)}")
        for d in (self.site.state_dir, self._dir, paths.dir, paths.parts):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self._locked(batch_id):
            if paths.input.exists():
                size = paths.input.stat().st_size
                return {"batch_id": batch_id, "parts": part + 1, "bytes": size, "complete": True}
            _write_atomically(paths.parts / f"{part:06d}", data)
            if not final:
                have = [p.stat().st_size for p in paths.parts.glob("[0-9]" * 6)]
                return {"batch_id": batch_id, "parts": len(have), "bytes": sum(have), "complete": False}
            missing = [n for n in range(part) if not (paths.parts / f"{n:06d}").is_file()]
            if missing:
                raise BatchError(f"batch {batch_id!r}: parts {missing[:10]} were never staged")
            tmp = paths.dir / f".{INPUT_NAME}.tmp"
            with tmp.open("wb") as out:
                for n in range(part + 1):
                    out.write((paths.parts / f"{n:06d}").read_bytes())
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, paths.input)
            fsync_dir(paths.dir)
            for leftover in paths.parts.iterdir():  # this run's parts, and any of an older attempt
                leftover.unlink()
            paths.parts.rmdir()
            size = paths.input.stat().st_size
        return {"batch_id": batch_id, "parts": part + 1, "bytes": size, "complete": True}

    async def collect(self, batch_id: str, offset: int, max_bytes: int) -> tuple[OutputChunk, BatchJob]:
        """Whole output lines from `offset`: up to what the runner made durable while the job
        runs, to the end once it has ended (the job's status is read first, so nothing written
        after it is taken for the last line)."""
        job = await self.status(batch_id)
        paths = self.paths(batch_id)
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise BatchError(f"offset must be an integer >= 0, got {offset!r}")
        if job.finished:
            limit = paths.output.stat().st_size if paths.output.exists() else 0
        else:
            progress = read_progress(paths.progress)
            limit = progress["durable_bytes"] if progress else 0
        return read_whole_lines(paths.output, offset, limit, max_bytes), job

    # -- records -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, batch_id: str) -> Iterator[None]:
        """One site function at a time per batch (two gateway retries may overlap)."""
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with (self._dir / f".{batch_id}.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _read_record(self, batch_id: str) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads((self._dir / f"{batch_id}.json").read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise BatchError(f"the record of batch {batch_id!r} is unreadable: {exc}") from exc
        return data

    def _record(self, batch_id: str) -> dict[str, Any]:
        _check_id(batch_id)
        record = self._read_record(batch_id)
        if record is None:
            raise BatchError(f"no batch {batch_id!r} at this site")
        return record

    def _write_record(self, batch_id: str, record: dict[str, Any]) -> None:
        _write_atomically(self._dir / f"{batch_id}.json", json.dumps(record).encode())

    def _log_tail(self, job_id: str) -> str:
        """The job log's last Hearth lines (the runner's and the script's): why it ended."""
        for log in self.site.logs_dir.glob(f"*-{job_id}.log"):
            lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
            hearth = [ln for ln in lines if "hearth" in ln.lower()]
            return " | ".join((hearth or lines)[-_LOG_TAIL_LINES:])[-800:]
        return ""


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _check_id(batch_id: str) -> None:
    plain = batch_id.replace("_", "").replace("-", "")
    if not batch_id or not plain.isascii() or not plain.isalnum() or len(batch_id) > 64:
        raise BatchError(f"bad batch id {batch_id!r}: letters, digits, '-' and '_' only")
