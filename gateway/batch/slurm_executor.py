"""Large batches as Slurm batch jobs at a site, through the batch site functions.

One batch is one job (`endpoints.batch`; slurm/batch.sbatch.j2) running Hearth's runner
(`endpoints.batch_runner`) with the model's engine inside the job. The executor:

1. stages the lines as an OpenAI batch input file at the site: in chunks of
   `batch.stage_chunk_bytes` through `batch_stage` (each under Globus Compute's payload limit;
   a retried chunk replaces itself), or, when the cluster has a `shared_dir`, by writing
   `<shared_dir>/<batch_id>/input.jsonl` itself. Each line's custom_id is
   `"<line>:<custom_id>"` (`endpoints.batch_protocol.line_custom_id`), so an output line maps
   back to its input line even when users repeat custom ids;
2. submits the job (`batch_submit`, naming the site's model; the site builds the command) and
   saves `{"job_id", "offset"}` with the batch (`spec.save_state`);
3. every `batch.slurm_poll_interval_s` collects the output lines past the saved offset
   (`batch_collect`, or from the shared directory), records each (`record` is idempotent), and
   saves the new offset, until every line it was given is recorded or the job has ended.

Restarts: `run` called again with the saved state resumes collecting at the saved offset (a
restart between recording and saving re-delivers a few lines, which `record` ignores). The job
keeps running while no gateway watches it; a pre-empted or requeued job resumes by itself.
Stop: `run` collects once more and returns; the job runs on unless `cancel` is called.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson

from endpoints.batch_protocol import (
    INPUT_NAME,
    MAX_COLLECT_BYTES,
    MAX_STAGE_BYTES,
    OUTPUT_NAME,
    PROGRESS_NAME,
    OutputChunk,
    fsync_dir,
    line_custom_id,
    read_progress,
    read_whole_lines,
    split_custom_id,
)
from endpoints.protocol import FUNCTIONS_VERSION, version_mismatch
from gateway.batch.executor import BatchExecutor, BatchLine, BatchSpec, LineResult, Recorder
from gateway.config import BatchSettings
from gateway.relay.compute import ComputeTransport

__all__ = ["SlurmBatchError", "SlurmExecutor"]

log = logging.getLogger(__name__)

_FINAL_COLLECT_S = 30.0  # after `stop`, the last collect may take this long


class SlurmBatchError(Exception):
    """A batch site function failed or could not be reached (the message says which and why)."""


class SlurmExecutor(BatchExecutor):
    """Runs a batch as one Slurm batch job on `cluster` (see the module docstring).

    `shared_dir`: the site's `<state_dir>/batches` as this host sees it (ClusterSettings.shared_dir).
    `site_config`: the site.yaml the site functions read, if not the endpoint's default.
    `served_names`: public model name -> the site's name for it (ModelSettings.served_name).
    `concurrency`: requests in flight in the job (default: the site's, 64).
    """

    def __init__(
        self,
        cluster: str,
        transport: ComputeTransport,
        settings: BatchSettings,
        *,
        shared_dir: Path | None = None,
        site_config: str | None = None,
        served_names: Mapping[str, str] | None = None,
        concurrency: int | None = None,
        task_timeout_s: float = 300.0,
    ) -> None:
        self.cluster = cluster
        self.transport = transport
        self.settings = settings
        self.shared_dir = Path(shared_dir) if shared_dir is not None else None
        self.site_config = site_config
        self.served_names = dict(served_names or {})
        self.concurrency = concurrency
        self.task_timeout_s = task_timeout_s

    # -- the BatchExecutor interface -----------------------------------------------------------

    async def run(
        self, spec: BatchSpec, lines: list[BatchLine], record: Recorder, stop: asyncio.Event
    ) -> None:
        if not lines:
            return
        state = dict(spec.state)
        if not state.get("job_id"):
            if stop.is_set() or not await self._stage(spec, lines, stop):
                return
            submitted = await self._submit(spec)
            state = {"cluster": self.cluster, "job_id": str(submitted["job_id"]), "offset": 0}
            await self._save(spec, state)
            where = {"batch_id": spec.batch_id, "cluster": self.cluster, "job_id": state["job_id"]}
            log.info("batch job submitted", extra={**where, "lines": len(lines)})
        wanted = {line.line for line in lines}
        while True:
            stopping = stop.is_set()
            job: dict[str, Any] | None = None
            try:
                collecting = self._collect(spec, state, record, wanted)
                job = await (asyncio.wait_for(collecting, _FINAL_COLLECT_S) if stopping else collecting)
            except (SlurmBatchError, TimeoutError) as exc:
                where = {"batch_id": spec.batch_id, "cluster": self.cluster, "error": str(exc)}
                log.warning("collecting a batch job's output failed; trying again", extra=where)
            if not wanted:
                return
            if job is not None and job.get("finished"):
                await self._ended_early(spec, state, job, len(wanted))
                return
            if stopping:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.slurm_poll_interval_s)

    async def cancel(self, spec: BatchSpec) -> None:
        """Stop the batch's job (a running one checkpoints and keeps its finished lines)."""
        if not spec.state.get("job_id"):
            return
        await self._call("batch_cancel", self._request(spec.batch_id))

    async def drain(self, spec: BatchSpec, lines: list[BatchLine], record: Recorder) -> None:
        """Collect what the cancelled job finished, until it has ended."""
        if spec.state.get("job_id"):
            await self.run(spec, lines, record, asyncio.Event())

    # -- staging and submitting ----------------------------------------------------------------

    def _request(self, batch_id: str, **fields: Any) -> dict[str, Any]:
        req: dict[str, Any] = {"version": FUNCTIONS_VERSION, "batch_id": batch_id, **fields}
        if self.site_config:
            req["site_config"] = self.site_config
        return req

    async def _stage(self, spec: BatchSpec, lines: list[BatchLine], stop: asyncio.Event) -> bool:
        """The input at the site; False if `stop` came first."""
        if self.shared_dir is not None:
            await asyncio.to_thread(self._write_shared_input, spec, lines)
            return True
        chunk = max(1024, min(self.settings.stage_chunk_bytes, MAX_STAGE_BYTES))
        part = 0
        pending = bytearray()
        for data in _input_lines(spec, lines):
            pending += data
            while len(pending) >= chunk:
                req = self._request(spec.batch_id, part=part, data=bytes(pending[:chunk]), final=False)
                await self._call("batch_stage", req)
                del pending[:chunk]
                part += 1
                if stop.is_set():
                    return False
        req = self._request(spec.batch_id, part=part, data=bytes(pending), final=True)
        result = await self._call("batch_stage", req)
        staged = result.get("staged") or {}
        if not staged.get("complete"):
            raise SlurmBatchError(f"batch_stage on {self.cluster} did not complete the input: {staged}")
        return True

    def _write_shared_input(self, spec: BatchSpec, lines: list[BatchLine]) -> None:
        assert self.shared_dir is not None
        where = self.shared_dir / spec.batch_id
        where.mkdir(parents=True, exist_ok=True, mode=0o770)
        target = where / INPUT_NAME
        if target.exists():  # written before a restart (atomically): the job may be reading it
            return
        tmp = where / f".{INPUT_NAME}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o660)
        with os.fdopen(fd, "wb") as f:
            for data in _input_lines(spec, lines):
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        fsync_dir(where)

    async def _submit(self, spec: BatchSpec) -> dict[str, Any]:
        fields: dict[str, Any] = {"model": self._served(spec)}
        if self.concurrency is not None:
            fields["concurrency"] = self.concurrency
        result = await self._call("batch_submit", self._request(spec.batch_id, **fields))
        job: dict[str, Any] = result["batch"]
        return job

    def _served(self, spec: BatchSpec) -> str:
        return self.served_names.get(spec.model, spec.model)

    # -- collecting ----------------------------------------------------------------------------

    async def _collect(
        self, spec: BatchSpec, state: dict[str, Any], record: Recorder, wanted: set[int]
    ) -> dict[str, Any]:
        """Record every output line past the saved offset; the job's status (read first)."""
        job: dict[str, Any] | None = None
        if self.shared_dir is not None:
            job = (await self._call("batch_status", self._request(spec.batch_id)))["batch"]
        while True:
            offset = int(state.get("offset") or 0)
            if self.shared_dir is not None:
                assert job is not None
                chunk = await asyncio.to_thread(self._read_shared_output, spec.batch_id, offset, job)
            else:
                req = self._request(spec.batch_id, offset=offset, max_bytes=MAX_COLLECT_BYTES)
                result = await self._call("batch_collect", req)
                chunk, job = result["output"], result["batch"]
            if chunk["skipped"]:
                log.warning("batch output lines too large to collect were skipped",
                            extra={"batch_id": spec.batch_id, "bytes": chunk["skipped"]})  # fmt: skip
            for raw in bytes(chunk["data"]).splitlines():
                result_line = _line_result(raw, spec.model, self._served(spec))
                if result_line is None:
                    log.warning("skipping an unreadable batch output line", extra={"batch_id": spec.batch_id})
                    continue
                await record(result_line)
                wanted.discard(result_line.line)
            if chunk["next_offset"] != offset:
                state["offset"] = chunk["next_offset"]
                await self._save(spec, state)
            if not chunk["data"] and not chunk["skipped"]:
                assert job is not None
                return job

    def _read_shared_output(self, batch_id: str, offset: int, job: Mapping[str, Any]) -> OutputChunk:
        assert self.shared_dir is not None
        where = self.shared_dir / batch_id
        output = where / OUTPUT_NAME
        if job.get("finished"):
            limit = output.stat().st_size if output.exists() else 0
        else:
            progress = read_progress(where / PROGRESS_NAME)
            limit = progress["durable_bytes"] if progress else 0
        return read_whole_lines(output, offset, limit, MAX_COLLECT_BYTES)

    async def _ended_early(
        self, spec: BatchSpec, state: dict[str, Any], job: Mapping[str, Any], missing: int
    ) -> None:
        """The job ended with lines unanswered (failed for good, or cancelled): say why."""
        why = (f"the Slurm batch job {job.get('job_id')} on {self.cluster} ended ({job.get('state')}, "
               f"exit status {job.get('exit_status')}, {job.get('restarts')} restarts) with {missing} "
               f"lines unanswered")  # fmt: skip
        if job.get("reason"):
            why += f": {job['reason']}"
        state["job_failure"] = why
        await self._save(spec, state)
        log.warning("batch job ended early", extra={"batch_id": spec.batch_id, "reason": why})

    # -- plumbing ------------------------------------------------------------------------------

    async def _save(self, spec: BatchSpec, state: dict[str, Any]) -> None:
        spec.state = dict(state)
        if spec.save_state is not None:
            await spec.save_state(dict(state))

    async def _call(self, function: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        try:
            result = await asyncio.wait_for(self.transport.call(function, payload), self.task_timeout_s)
        except TimeoutError:
            raise SlurmBatchError(
                f"{function} on {self.cluster} did not finish within {self.task_timeout_s:g} s"
            ) from None
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise SlurmBatchError(
                f"{function} on {self.cluster}: the Globus Compute task failed: {exc}"
            ) from exc
        if not isinstance(result, dict):
            raise SlurmBatchError(
                f"{function} on {self.cluster} returned {type(result).__name__}, not a result"
            )
        mismatch = version_mismatch(result)
        if mismatch is not None:
            raise SlurmBatchError(f"{function} on {self.cluster}: {mismatch}")
        failure = result.get("failure")
        if failure is not None:
            raise SlurmBatchError(f"{function} on {self.cluster} failed: {failure.get('detail')}")
        return result


def _input_lines(spec: BatchSpec, lines: Iterable[BatchLine]) -> Iterable[bytes]:
    """The batch's input file, line by line (bodies as the user wrote them; the runner in the
    job puts the engine's model name in)."""
    for line in lines:
        custom_id = line_custom_id(line.line, line.custom_id)
        item = {"custom_id": custom_id, "method": "POST", "url": spec.endpoint, "body": line.body}
        yield orjson.dumps(item) + b"\n"


def _line_result(raw: bytes, public_model: str, served_model: str) -> LineResult | None:
    """An output line as a LineResult (None if it is not one of ours)."""
    try:
        item = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(item, dict) or not isinstance(item.get("custom_id"), str):
        return None
    ids = split_custom_id(item["custom_id"])
    if ids is None:
        return None
    line, custom_id = ids
    response, error = item.get("response"), item.get("error")
    if isinstance(response, dict):
        body = response.get("body")
        if not isinstance(body, dict):
            body = None
        elif body.get("model") == served_model != public_model:
            body = {**body, "model": public_model}
        usage = (body or {}).get("usage")
        usage = usage if isinstance(usage, dict) else {}
        request_id = response.get("request_id")
        return LineResult(
            line=line,
            custom_id=custom_id,
            status_code=_int(response.get("status_code")),
            body=body,
            request_id=str(request_id) if request_id else None,
            prompt_tokens=_int(usage.get("prompt_tokens")),
            completion_tokens=_int(usage.get("completion_tokens")),
        )
    if isinstance(error, dict):
        code, message = str(error.get("code") or "batch_error"), str(error.get("message") or "")
    else:
        code, message = "bad_output", "the batch job's output line has neither a response nor an error"
    return LineResult(line=line, custom_id=custom_id, error={"code": code, "message": message})


def _int(value: object) -> int:
    try:
        return int(value) if value is not None and not isinstance(value, bool) else 0  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return 0
