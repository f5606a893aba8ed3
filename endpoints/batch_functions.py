"""The site functions of large batches, run through Globus Compute like `endpoints.functions`.

- `batch_stage`: one chunk of a batch's input (under Globus Compute's payload limit), kept in
  the batch's directory; a part sent again replaces itself; the final part joins them.
- `batch_submit`: the batch job for a model of the site config (`endpoints.batch`): Hearth's
  runner with the model's engine, over the staged input. The site builds the command from its
  own config: the gateway names a model, never a command, so it cannot run anything else here.
  Submitting again returns the job already submitted.
- `batch_status`: the job's state, restarts, progress, and whether it has ended.
- `batch_collect`: whole output lines from a byte offset (only what is durable while the job
  runs), with the job's status.
- `batch_cancel`: stop the job, keeping the lines it finished.

Like every site function they take one payload dict (`endpoints.batch_protocol`), never raise
for trouble at the site (it is the result's `failure`), and import only `endpoints/`.
In shared-directory mode (the gateway sees `<state_dir>/batches/`) the gateway writes the
input and reads the output itself; only submit, status and cancel cross Globus Compute.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, cast

from endpoints.batch import DEFAULT_CONCURRENCY, BatchError, BatchJobs
from endpoints.batch_protocol import (
    MAX_COLLECT_BYTES,
    BatchCancelRequest,
    BatchCollectRequest,
    BatchCollectResult,
    BatchResult,
    BatchStageRequest,
    BatchStageResult,
    BatchStatusRequest,
    BatchSubmitRequest,
)
from endpoints.protocol import FUNCTIONS_VERSION, Failure
from endpoints.site import SiteConfig, SiteConfigError, load_site
from endpoints.slurm import SlurmError
from endpoints.templates import TemplateRenderError

__all__ = ["BATCH_FUNCTIONS", "batch_cancel", "batch_collect", "batch_stage", "batch_status", "batch_submit"]

_SiteWork = Callable[[BatchJobs, Any], Coroutine[Any, Any, dict[str, Any]]]


def batch_stage(req: BatchStageRequest) -> BatchStageResult:
    """Keep part `part` of the batch's input; `final` joins parts 0..part into input.jsonl."""

    async def work(jobs: BatchJobs, req: BatchStageRequest) -> dict[str, Any]:
        data = req["data"]
        if not isinstance(data, bytes | bytearray):
            raise BatchError("data must be bytes")
        return {"staged": jobs.stage(req["batch_id"], req["part"], bytes(data), bool(req["final"]))}

    return cast(BatchStageResult, _site(req, work))


def batch_submit(req: BatchSubmitRequest) -> BatchResult:
    """Submit the job for `model` over the staged input (or return the one already submitted)."""

    async def work(jobs: BatchJobs, req: BatchSubmitRequest) -> dict[str, Any]:
        concurrency = req.get("concurrency", DEFAULT_CONCURRENCY)
        job = await jobs.submit(req["batch_id"], model=req["model"], concurrency=concurrency)
        return {"batch": job.to_wire()}

    return cast(BatchResult, _site(req, work))


def batch_status(req: BatchStatusRequest) -> BatchResult:
    """The job's state (its script's status.json, else Slurm's), progress, restarts, end."""

    async def work(jobs: BatchJobs, req: BatchStatusRequest) -> dict[str, Any]:
        return {"batch": (await jobs.status(req["batch_id"])).to_wire()}

    return cast(BatchResult, _site(req, work))


def batch_collect(req: BatchCollectRequest) -> BatchCollectResult:
    """Whole output lines from `offset` (at most `max_bytes`), and the job's status."""

    async def work(jobs: BatchJobs, req: BatchCollectRequest) -> dict[str, Any]:
        max_bytes = req.get("max_bytes", MAX_COLLECT_BYTES)
        output, job = await jobs.collect(req["batch_id"], req["offset"], max_bytes)
        return {"output": output, "batch": job.to_wire()}

    return cast(BatchCollectResult, _site(req, work))


def batch_cancel(req: BatchCancelRequest) -> BatchResult:
    """Stop the job; the lines it finished stay collectable."""

    async def work(jobs: BatchJobs, req: BatchCancelRequest) -> dict[str, Any]:
        return {"batch": (await jobs.cancel(req["batch_id"])).to_wire()}

    return cast(BatchResult, _site(req, work))


def _site(req: Any, work: _SiteWork) -> dict[str, Any]:
    if req.get("version") != FUNCTIONS_VERSION:
        failure: Failure = {"kind": "version", "detail": f"site functions are version {FUNCTIONS_VERSION}"}
        return {"version": FUNCTIONS_VERSION, "failure": failure}
    try:
        site: SiteConfig = load_site(req.get("site_config"))
        result = asyncio.run(work(BatchJobs(site), req))
    except (
        SiteConfigError,
        BatchError,
        SlurmError,
        TemplateRenderError,
        OSError,
        KeyError,
        TypeError,
    ) as exc:
        detail = f"missing {exc} in the request" if isinstance(exc, KeyError) else str(exc)
        return {"version": FUNCTIONS_VERSION, "failure": {"kind": "site", "detail": detail}}
    return {"version": FUNCTIONS_VERSION, "cluster": site.cluster, **result}


# To be merged into `endpoints.functions.SITE_FUNCTIONS` (by the name the gateway calls).
BATCH_FUNCTIONS: dict[str, Callable[[Any], Any]] = {
    "batch_stage": batch_stage,
    "batch_submit": batch_submit,
    "batch_status": batch_status,
    "batch_collect": batch_collect,
    "batch_cancel": batch_cancel,
}
