"""The batch runner: takes batches from validating to a final state, on any replica.

Every replica runs one :class:`BatchRunner`. It claims active batches with a lease (see
:mod:`gateway.store.batches`), so each batch is driven by one replica at a time and taken over
when that replica dies. Driving a batch:

1. **validating** — the input file, line by line (:mod:`gateway.batch.validate`); a bad file
   ends ``failed`` with line-numbered errors.
2. **in_progress** — the lines without a checkpoint go to an executor (hot workers, or a Slurm
   batch job for large batches where the model's cluster can run one); each finished line is
   checkpointed (buffered for at most a quarter second). Cancel, the completion window's end,
   or a lost lease stop the executor.
3. **finalizing** (or **cancelling**) — lines never run are given an error line
   (``batch_cancelled``, ``batch_expired``, or ``batch_line_failed``), the output file (2xx
   answers) and error file (the rest) are written in input order under ids derived from the
   batch id (a repeated finalization rewrites the same files), then the batch ends
   ``completed``, ``expired`` or ``cancelled``. A batch whose every line failed has only an
   error file.

Nothing is lost or duplicated across restarts: a line is executed again only if its result
was not checkpointed, and one checkpoint per line is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from gateway.batch.executor import BatchExecutor, BatchLine, BatchSpec, LineResult
from gateway.batch.validate import validate_lines
from gateway.config import BatchSettings
from gateway.store.batches import BatchStore
from gateway.store.files import FileStore
from gateway.store.models import Batch, utcnow

__all__ = ["BatchRunner", "ExecutorChoice", "output_file_id"]

log = logging.getLogger(__name__)

ExecutorChoice = Callable[[Batch, BatchSpec], BatchExecutor]
_FLUSH_S = 0.25
_FLUSH_LINES = 200


def output_file_id(batch_id: str, kind: str) -> str:
    """The id of a batch's output (``kind`` "output") or error ("error") file: derived from the
    batch id, so writing it twice replaces it."""
    return "file-" + hashlib.sha256(f"{batch_id}/{kind}".encode()).hexdigest()[:24]


class BatchRunner:
    def __init__(
        self,
        store: BatchStore,
        files: FileStore,
        settings: BatchSettings,
        *,
        choose_executor: ExecutorChoice,
        model_refusal: Callable[[Batch, str], str | None],
        replica_id: str | None = None,
        poll_s: float = 5.0,
        max_batches: int = 8,
    ) -> None:
        self._store = store
        self._files = files
        self._settings = settings
        self._choose = choose_executor
        self._model_refusal = model_refusal
        # host:pid:random — says which process holds a batch (in logs, and to tests).
        self.replica = replica_id or f"{socket.gethostname()[:32]}:{os.getpid()}:{secrets.token_hex(4)}"
        self._poll_s = poll_s
        self._max_batches = max_batches
        self._driving: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()

    async def run(self) -> None:
        """Claim and drive batches until cancelled."""
        try:
            while True:
                try:
                    await self.tick()
                except Exception:
                    log.exception("batch runner round failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._poll_s)
                self._wake.clear()
        finally:
            tasks = list(self._driving.values())
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            for batch_id in list(self._driving):
                with contextlib.suppress(Exception):
                    await self._store.release(batch_id, self.replica)

    async def tick(self) -> None:
        for batch_id in await self._store.claimable(self.replica):
            if batch_id in self._driving or len(self._driving) >= self._max_batches:
                continue
            if await self._store.claim(batch_id, self.replica, self._settings.lease_s):
                task = asyncio.create_task(self._drive(batch_id), name=f"hearth-batch-{batch_id}")
                self._driving[batch_id] = task
                task.add_done_callback(self._forget)

    def wake(self) -> None:
        """Look for work now (a batch was just created or cancelled here), not at the next poll."""
        self._wake.set()

    def _forget(self, task: asyncio.Task[None]) -> None:
        for batch_id, t in list(self._driving.items()):
            if t is task:
                del self._driving[batch_id]

    async def idle(self) -> None:
        """Wait until this replica drives no batch (tests)."""
        while self._driving:
            await asyncio.gather(*self._driving.values(), return_exceptions=True)

    # -- one batch

    async def _drive(self, batch_id: str) -> None:
        lost = asyncio.Event()
        keeper = asyncio.create_task(self._keep_claim(batch_id, lost))
        try:
            while not lost.is_set():
                batch = await self._store.get(batch_id)
                if batch is None or batch.status not in (
                    "validating",
                    "in_progress",
                    "finalizing",
                    "cancelling",
                ):
                    return
                if batch.status == "validating":
                    await self._validate(batch)
                elif batch.status == "in_progress":
                    await self._execute(batch, lost)
                else:
                    await self._finalize(batch)
        except Exception:
            log.exception("batch %s: driving failed; trying again shortly", batch_id)
            await asyncio.sleep(min(self._settings.lease_s, 10.0))  # not a tight retry loop
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            with contextlib.suppress(Exception):
                await self._store.release(batch_id, self.replica)

    async def _keep_claim(self, batch_id: str, lost: asyncio.Event) -> None:
        while True:
            await asyncio.sleep(self._settings.lease_s / 3)
            try:
                held = await self._store.claim(batch_id, self.replica, self._settings.lease_s)
            except Exception:
                log.warning("batch %s: renewing the claim failed", batch_id, exc_info=True)
                continue
            if not held:
                log.warning("batch %s: the claim was lost; stopping", batch_id)
                lost.set()
                return

    @staticmethod
    def _input_lines(path: Path) -> Iterator[bytes]:
        with path.open("rb") as f:
            yield from f

    async def _lines(
        self, batch: Batch, *, check_model: bool = False
    ) -> tuple[list[BatchLine], list[dict[str, Any]], str | None] | None:
        """The input's lines (and errors). Whether the user may use the model is checked once,
        at validation: re-reading the file later must not drop lines because a model is
        momentarily without workers."""
        info = await self._files.get(batch.input_file_id, batch.owner)
        if info is None:
            return None
        path = self._files.local_path(info)
        checked = await asyncio.to_thread(
            validate_lines,
            self._input_lines(path),
            batch.endpoint,
            max_lines=self._settings.max_lines,
            model_refusal=(lambda model: self._model_refusal(batch, model))
            if check_model
            else (lambda _m: None),
        )
        errors = checked.errors
        if checked.more_errors:
            more = f"{checked.more_errors} more errors not shown."
            errors = [*errors, {"code": "too_many_errors", "message": more, "param": None, "line": None}]
        return checked.lines, errors, checked.model

    async def _validate(self, batch: Batch) -> None:
        parsed = await self._lines(batch, check_model=True)
        now = utcnow()
        if parsed is None:
            gone = "The input file no longer exists."
            errors = [{"code": "invalid_file", "message": gone, "param": "input_file_id", "line": None}]
            await self._store.update(batch.id, self.replica, status="failed", failed_at=now,
                                     errors_json=orjson.dumps(errors).decode())  # fmt: skip
            return
        lines, errors, model = parsed
        if errors:
            await self._store.update(batch.id, self.replica, status="failed", failed_at=now,
                                     errors_json=orjson.dumps(errors).decode())  # fmt: skip
            log.info("batch %s failed validation: %d errors", batch.id, len(errors))
            return
        await self._store.update(
            batch.id, self.replica, status="in_progress", in_progress_at=now, total=len(lines), model=model
        )

    async def _execute(self, batch: Batch, lost: asyncio.Event) -> None:
        parsed = await self._lines(batch)
        if parsed is None:
            await self._store.update(batch.id, self.replica, status="finalizing", finalizing_at=utcnow())
            return
        lines = parsed[0]
        done = await self._store.done_lines(batch.id)
        todo = [line for line in lines if line.line not in done]
        stop = asyncio.Event()
        spec = BatchSpec(
            batch_id=batch.id, owner=batch.owner, endpoint=batch.endpoint, model=batch.model or "",
            total=batch.total, state=orjson.loads(batch.executor_state) if batch.executor_state else {},
        )  # fmt: skip

        async def save_state(state: dict[str, Any]) -> None:
            spec.state = state
            await self._store.update(batch.id, self.replica, executor_state=orjson.dumps(state).decode())

        spec.save_state = save_state
        executor = self._choose(batch, spec)
        recorder = _Recorder(self._store, batch.id, done)
        watcher = asyncio.create_task(self._watch(batch, stop, lost))
        flusher = asyncio.create_task(recorder.flush_periodically())
        try:
            if todo:
                await executor.run(spec, todo, recorder.record, stop)
        finally:
            watcher.cancel()
            flusher.cancel()
            for task in (watcher, flusher):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await recorder.flush()
        if lost.is_set():
            return
        status = await self._store.status(batch.id)
        if status == "cancelling":
            await executor.cancel(spec)
            # Lines the work elsewhere finished before it stopped are kept, not cancelled.
            done = await self._store.done_lines(batch.id)
            await executor.drain(spec, [line for line in lines if line.line not in done], recorder.record)
            await recorder.flush()
            return  # the loop finalizes it as cancelled
        await self._store.update(batch.id, self.replica, status="finalizing", finalizing_at=utcnow())

    async def _watch(self, batch: Batch, stop: asyncio.Event, lost: asyncio.Event) -> None:
        """Stop the executor on cancel, at the end of the completion window, or on a lost claim."""
        while not stop.is_set():
            current = await self._store.get(batch.id)
            if (
                lost.is_set()
                or current is None
                or current.status == "cancelling"
                or utcnow() >= current.expires_at
            ):
                stop.set()
                return
            await asyncio.sleep(0.5)

    async def _finalize(self, batch: Batch) -> None:
        parsed = await self._lines(batch)
        lines = parsed[0] if parsed else []
        done = await self._store.done_lines(batch.id)
        now = utcnow()
        if batch.status == "cancelling":
            final, code, message = (
                "cancelled",
                "batch_cancelled",
                "The batch was cancelled before this request ran.",
            )
        elif now >= batch.expires_at and len(done) < len(lines):
            final, code, message = (
                "expired",
                "batch_expired",
                ("This request could not be executed before the completion window expired."),
            )
        else:
            final, code = "completed", "batch_line_failed"
            reason = (orjson.loads(batch.executor_state) if batch.executor_state else {}).get("job_failure")
            message = f"This request could not be executed{f': {reason}' if reason else ''}."
        missing = [
            (line.line, False, _error_line(line, code, message)) for line in lines if line.line not in done
        ]
        await self._store.record(batch.id, missing)
        ok_lines: list[bytes] = []
        error_lines: list[bytes] = []
        async for _, ok, output in self._store.results(batch.id):
            (ok_lines if ok else error_lines).append(output.encode())
        output_id = error_id = None
        if ok_lines:
            output_id = output_file_id(batch.id, "output")
            await self._files.add_lines(batch.owner, "batch_output", f"{batch.id}_output.jsonl", ok_lines,
                                        file_id=output_id)  # fmt: skip
        if error_lines:
            error_id = output_file_id(batch.id, "error")
            await self._files.add_lines(batch.owner, "batch_output", f"{batch.id}_error.jsonl", error_lines,
                                        file_id=error_id)  # fmt: skip
        stamp = {"completed": "completed_at", "expired": "expired_at", "cancelled": "cancelled_at"}[final]
        changed = await self._store.update(
            batch.id, self.replica, status=final, output_file_id=output_id, error_file_id=error_id,
            completed=len(ok_lines), failed=len(error_lines), total=len(lines) or batch.total, **{stamp: now},
        )  # fmt: skip
        if changed:
            await self._store.delete_results(batch.id)
            log.info("batch %s %s: %d ok, %d failed", batch.id, final, len(ok_lines), len(error_lines))


class _Recorder:
    """Buffers finished lines and checkpoints them in small transactions."""

    def __init__(self, store: BatchStore, batch_id: str, done: set[int]) -> None:
        self._store = store
        self._batch_id = batch_id
        self._done = done
        self._buffer: list[tuple[int, bool, str]] = []
        self._lock = asyncio.Lock()
        self._last = time.monotonic()

    async def record(self, result: LineResult) -> None:
        if result.line in self._done:
            return
        self._done.add(result.line)
        self._buffer.append((result.line, result.ok, _output_line(result)))
        if len(self._buffer) >= _FLUSH_LINES:
            await self.flush()

    async def flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(_FLUSH_S)
            await self.flush()

    async def flush(self) -> None:
        async with self._lock:
            if not self._buffer:
                return
            batch, self._buffer = self._buffer, []
            try:
                await self._store.record(self._batch_id, batch)
            except Exception:
                self._buffer = batch + self._buffer  # keep them for the next flush
                for line, _, _ in batch:
                    self._done.discard(line)  # so a retry of the line is not dropped
                raise
            ok, failed = await self._store.counts(self._batch_id)
            await self._store.progress(self._batch_id, ok, failed)


def _output_line(r: LineResult) -> str:
    line: dict[str, Any] = {"id": "batch_req_" + secrets.token_hex(12), "custom_id": r.custom_id}
    if r.error is not None:
        line["response"] = None
        line["error"] = r.error
    else:
        line["response"] = {"status_code": r.status_code, "request_id": r.request_id, "body": r.body}
        line["error"] = None
    return orjson.dumps(line).decode()


def _error_line(line: BatchLine, code: str, message: str) -> str:
    return orjson.dumps({
        "id": "batch_req_" + secrets.token_hex(12), "custom_id": line.custom_id, "response": None,
        "error": {"code": code, "message": message},
    }).decode()  # fmt: skip
