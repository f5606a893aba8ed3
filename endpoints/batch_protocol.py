"""The wire of large batches: what the batch site functions take and return, and the files a
batch job keeps at the site.

Shared by the gateway (`gateway.batch.slurm_executor`), the site functions
(`endpoints.batch_functions`) and the runner inside the job (`endpoints.batch_runner`); it
imports none of them, only the standard library and `endpoints.protocol`.

A batch at a site is one directory, `<state_dir>/batches/<batch_id>/` (in shared-directory
mode the gateway sees it as `<shared_dir>/<batch_id>/`):

- `input.jsonl`: OpenAI batch request lines, `{"custom_id", "method", "url", "body"}`, each
  `custom_id` being `"<line>:<the user's custom_id>"` (`line_custom_id`), so an output line
  maps back to its input line even when users repeat custom ids;
- `output.jsonl`: OpenAI batch output lines, appended by the runner as lines finish, in any
  order (https://platform.openai.com/docs/api-reference/batch/request-output);
- `progress.json`: the runner's `Progress`; `durable_bytes` is how much of `output.jsonl` is on
  disk for good (fsynced). Readers take whole lines up to there while the job runs, so a line
  they read can never be lost in a crash and written again at another offset;
- `status.json`: the job script's own status (slurm/README.md).

Formats: https://platform.openai.com/docs/api-reference/batch.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, NotRequired, TypedDict

from endpoints.protocol import MAX_PAYLOAD_BYTES, Failure

__all__ = [
    "INPUT_NAME",
    "MAX_COLLECT_BYTES",
    "MAX_STAGE_BYTES",
    "OUTPUT_NAME",
    "PROGRESS_NAME",
    "STATUS_NAME",
    "BatchCancelRequest",
    "BatchCollectRequest",
    "BatchCollectResult",
    "BatchJobWire",
    "BatchResult",
    "BatchStageRequest",
    "BatchStageResult",
    "BatchStatusRequest",
    "BatchSubmitRequest",
    "OutputChunk",
    "Progress",
    "StagedInput",
    "fsync_dir",
    "line_custom_id",
    "read_progress",
    "read_whole_lines",
    "split_custom_id",
]

INPUT_NAME = "input.jsonl"
OUTPUT_NAME = "output.jsonl"
PROGRESS_NAME = "progress.json"
STATUS_NAME = "status.json"

# One staged chunk, and the output one collect returns: under Globus Compute's payload limit
# with room for the rest of the payload.
MAX_STAGE_BYTES = MAX_PAYLOAD_BYTES - 64 * 1024
MAX_COLLECT_BYTES = MAX_PAYLOAD_BYTES - 64 * 1024


class BatchStageRequest(TypedDict):
    """One chunk of a batch's input. Parts are numbered from 0 and sent in order; sending a part
    again replaces it (a retry is never duplicated). `final` marks the last part: the site then
    joins parts 0..part into `input.jsonl`. Once joined, further parts are ignored."""

    version: str
    site_config: NotRequired[str]
    batch_id: str
    part: int
    data: bytes  # at most MAX_STAGE_BYTES; need not end at a line boundary
    final: bool


class StagedInput(TypedDict):
    batch_id: str
    parts: int  # parts received so far (all of them once complete)
    bytes: int  # bytes received so far, or the size of input.jsonl once complete
    complete: bool  # input.jsonl is in place


class BatchStageResult(TypedDict):
    version: str
    cluster: NotRequired[str]
    staged: NotRequired[StagedInput]
    failure: NotRequired[Failure]


class BatchSubmitRequest(TypedDict):
    """Submit the batch job for `batch_id` over its `input.jsonl`, serving `model` (the site's
    name for it, a key of the site config's `models`). Submitting a batch again returns the job
    already submitted (a gateway that crashed before saving the job id resumes it)."""

    version: str
    site_config: NotRequired[str]
    batch_id: str
    model: str
    concurrency: NotRequired[int]  # requests in flight in the job; default 64


class BatchStatusRequest(TypedDict):
    version: str
    site_config: NotRequired[str]
    batch_id: str


class BatchCancelRequest(BatchStatusRequest):
    """Stop the job: it keeps the lines it finished (they stay collectable)."""


class BatchJobWire(TypedDict):
    """`endpoints.batch.BatchJob.to_wire()`."""

    batch_id: str
    job_id: str
    state: str  # status.json's state ("running", "requeued", "stopped", "finished", "failed"), else Slurm's
    slurm_state: str  # JobState value, or "gone" once Slurm forgot the job
    exit_status: int | None
    restarts: int
    checkpoint_dir: str
    finished: bool  # the job will write nothing more (Slurm says it ended, or forgot it)
    done: int | None  # output lines so far (progress.json), None before the runner started
    total: int | None  # input lines
    reason: NotRequired[str]  # why a finished job ended early (its log's last Hearth lines)


class BatchResult(TypedDict):
    """The result of batch_submit, batch_status and batch_cancel."""

    version: str
    cluster: NotRequired[str]
    batch: NotRequired[BatchJobWire]
    failure: NotRequired[Failure]


class BatchCollectRequest(TypedDict):
    """Output lines from byte `offset` of `output.jsonl`: whole lines only, at most `max_bytes`
    (capped at MAX_COLLECT_BYTES)."""

    version: str
    site_config: NotRequired[str]
    batch_id: str
    offset: int
    max_bytes: NotRequired[int]


class OutputChunk(TypedDict):
    data: bytes  # whole output lines, each ending in "\n"
    offset: int  # where `data` starts: the request's offset, plus any bytes skipped
    next_offset: int  # where to ask next time
    available: int  # how far the file may be read now (durable bytes, or its size once the job ended)
    skipped: int  # bytes of lines longer than max_bytes, passed over (those lines are lost)
    # Ask again from next_offset until a chunk has neither data nor skipped bytes.


class BatchCollectResult(TypedDict):
    version: str
    cluster: NotRequired[str]
    output: NotRequired[OutputChunk]
    batch: NotRequired[BatchJobWire]  # the job's status, read before the output
    failure: NotRequired[Failure]


class Progress(TypedDict):
    """`progress.json`, written by the runner (atomically) after each fsync of the output."""

    done: int  # input lines with an output line
    total: int  # input lines
    durable_bytes: int  # output.jsonl bytes on disk for good; always at a line boundary
    at: str  # UTC ISO time
    job_id: NotRequired[str]


def line_custom_id(line: int, custom_id: str) -> str:
    """The custom_id a staged line carries: the input line number, then the user's id."""
    return f"{line}:{custom_id}"


def split_custom_id(staged: str) -> tuple[int, str] | None:
    """(line, the user's custom_id) of a staged custom_id, or None if it is not one."""
    head, sep, custom_id = staged.partition(":")
    if not sep or not head.isdigit():
        return None
    return int(head), custom_id


def read_progress(path: Path) -> Progress | None:
    """The runner's progress file, or None if it is missing or unreadable (not written yet)."""
    try:
        data: Any = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("durable_bytes"), int):
        return None
    progress: Progress = {
        "done": int(data.get("done") or 0),
        "total": int(data.get("total") or 0),
        "durable_bytes": int(data["durable_bytes"]),
        "at": str(data.get("at") or ""),
    }
    if data.get("job_id"):
        progress["job_id"] = str(data["job_id"])
    return progress


def read_whole_lines(path: Path, offset: int, limit: int, max_bytes: int) -> OutputChunk:
    """Whole lines of `path` from `offset`, not past byte `limit`, at most `max_bytes` of them.

    `limit` is how far the file may be read: `Progress.durable_bytes` while the job runs, the
    file's size once it has ended. A line longer than `max_bytes` is passed over (`skipped`):
    it could never cross Globus Compute. An `offset` that is not at a line start (a reader that
    outlived a disk that lost data) yields a broken first line the reader must skip.
    """
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    max_bytes = max(1, min(max_bytes, MAX_COLLECT_BYTES))
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        size = 0
    end = min(limit, size)
    position = offset
    with contextlib.ExitStack() as stack:
        f = stack.enter_context(path.open("rb")) if end > offset else None
        while f is not None and position < end:
            f.seek(position)
            data = f.read(min(end - position, max_bytes))
            cut = data.rfind(b"\n")
            if cut >= 0:
                return {"data": data[: cut + 1], "offset": position, "next_offset": position + cut + 1,
                        "available": end, "skipped": position - offset}  # fmt: skip
            if len(data) < max_bytes:
                break  # the last line is not whole yet
            # One line longer than max_bytes: pass over it, once its end is there.
            line_end = _line_end(f, position + len(data), end)
            if line_end is None:
                break
            position = line_end
    return {"data": b"", "offset": position, "next_offset": position, "available": max(end, position),
            "skipped": position - offset}  # fmt: skip


def _line_end(f: Any, position: int, end: int) -> int | None:
    """The position just after the next newline at or after `position`, before `end`."""
    f.seek(position)
    while position < end:
        block: bytes = f.read(min(1 << 20, end - position))
        if not block:
            return None
        cut = block.find(b"\n")
        if cut >= 0:
            return position + cut + 1
        position += len(block)
    return None


def fsync_dir(path: Path) -> None:
    """Make a rename in directory `path` durable (best effort: not every file system can)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
