"""Offline batch jobs at a site: the seam the Batch API's large batches go through.

A batch job runs one command (`vllm run-batch -i … -o …` in production, or Hearth's own runner)
over an input file into an output file, as a Slurm job rendered from slurm/batch.sbatch.j2,
with a checkpoint directory that survives pre-emption (the job requeues itself) and a
`status.json` the job keeps current (slurm/README.md). Staging the input to the site and
collecting the output is the caller's part (the Batch API issue builds it on this).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from endpoints.site import SiteConfig
from endpoints.slurm import JobState, Slurm
from endpoints.templates import render


class BatchError(Exception):
    """A request about batch jobs that cannot be done (bad id, unknown batch)."""


@dataclass(frozen=True)
class BatchJob:
    batch_id: str
    job_id: str
    state: str  # the job script's own status ("running", "finished", "failed", …) or Slurm's
    slurm_state: str
    exit_status: int | None
    restarts: int
    checkpoint_dir: str

    def to_wire(self) -> dict[str, Any]:
        return dict(self.__dict__)


class BatchJobs:
    def __init__(self, site: SiteConfig, slurm: Slurm | None = None) -> None:
        self.site = site
        self.slurm = slurm or Slurm(env=site.slurm_env)

    @property
    def _dir(self) -> Path:
        return self.site.state_dir / "batches"

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

    async def submit(
        self, batch_id: str, command: str, input_path: str, output_path: str, **resources: Any
    ) -> BatchJob:
        script = self.render(batch_id, command, input_path, output_path, **resources)
        for d in (self.site.state_dir, self._dir, self._dir / batch_id, self.site.logs_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        record = self._dir / f"{batch_id}.json"
        if record.exists():
            raise BatchError(f"batch {batch_id!r} was already submitted at this site")
        job_id = await self.slurm.submit(script)
        record.write_text(json.dumps({"batch_id": batch_id, "job_id": job_id}))
        return await self.status(batch_id)

    async def status(self, batch_id: str) -> BatchJob:
        _check_id(batch_id)
        try:
            record = json.loads((self._dir / f"{batch_id}.json").read_text())
        except OSError:
            raise BatchError(f"no batch {batch_id!r} at this site") from None
        job = await self.slurm.job(record["job_id"])
        try:
            status = json.loads((self._dir / batch_id / "status.json").read_text())
        except (OSError, ValueError):
            status = {}
        slurm_state = job.state.value if job is not None else "gone"
        state = status.get("state") or (
            "pending" if job is not None and job.state is JobState.PENDING else slurm_state
        )
        return BatchJob(
            batch_id=batch_id, job_id=record["job_id"], state=state, slurm_state=slurm_state,
            exit_status=status.get("exit_status"), restarts=int(status.get("restarts") or 0),
            checkpoint_dir=str(self._dir / batch_id),
        )  # fmt: skip

    async def cancel(self, batch_id: str) -> BatchJob:
        """Ask the job to checkpoint and stop (TERM to its script), keeping what it finished."""
        current = await self.status(batch_id)
        await self.slurm.cancel(current.job_id, signal="TERM", batch=True)
        return await self.status(batch_id)


def _check_id(batch_id: str) -> None:
    if not batch_id or not batch_id.replace("_", "").replace("-", "").isalnum() or len(batch_id) > 64:
        raise BatchError(f"bad batch id {batch_id!r}: letters, digits, '-' and '_' only")
