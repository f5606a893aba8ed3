"""Where a batch's lines run: the seam between the batch runner and the clusters.

The runner (:mod:`gateway.batch.runner`) owns the batch's life cycle, its checkpoints and its
output files. An executor only runs lines: through the gateway's own dispatcher to hot workers
(:class:`gateway.batch.hot.HotExecutor`, small batches) or as a Slurm batch job at a site
(:class:`gateway.batch.slurm_executor.SlurmExecutor`, large ones). Executors must be resumable:
after a gateway restart (or on another replica) :meth:`BatchExecutor.run` is called again with
the lines that have no result yet and the state the executor saved.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BatchExecutor", "BatchLine", "BatchSpec", "LineResult", "Recorder", "StateSaver"]


@dataclass(frozen=True, slots=True)
class BatchLine:
    line: int  # 1-based line number in the input file
    custom_id: str
    body: dict[str, Any]  # the request body as the user wrote it ("model" is the public name)


@dataclass(frozen=True, slots=True)
class LineResult:
    """How one line ended. Exactly one of: a response (``status_code`` and ``body``, which may be
    an error body for a 4xx/5xx answer) or an ``error`` (the request was not executed)."""

    line: int
    custom_id: str
    status_code: int = 0
    body: dict[str, Any] | None = None
    request_id: str | None = None
    error: dict[str, str] | None = None  # {"code": ..., "message": ...}
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None and 200 <= self.status_code < 300


Recorder = Callable[[LineResult], Awaitable[None]]
StateSaver = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(slots=True)
class BatchSpec:
    batch_id: str
    owner: str  # the user the batch runs as (usage records, permissions)
    endpoint: str  # "/v1/chat/completions", "/v1/completions" or "/v1/embeddings"
    model: str  # the public model name every line asks for
    total: int  # lines in the input file
    state: dict[str, Any] = field(default_factory=dict)  # what the executor saved last time
    save_state: StateSaver | None = None  # persist `state` (e.g. the Slurm job id) with the batch


class BatchExecutor(ABC):
    """Runs lines. ``record`` checkpoints one finished line (calling it twice for a line is
    harmless: the first result is kept). Return when every line is recorded, or soon after
    ``stop`` is set (cancel, expiry, shutdown: lines not recorded then are the runner's to
    account for)."""

    @abstractmethod
    async def run(
        self, spec: BatchSpec, lines: list[BatchLine], record: Recorder, stop: asyncio.Event
    ) -> None: ...

    async def cancel(self, spec: BatchSpec) -> None:
        """Stop work running elsewhere for this batch (a Slurm job). Default: nothing to do."""
        return None

    async def drain(self, spec: BatchSpec, lines: list[BatchLine], record: Recorder) -> None:
        """After :meth:`cancel`: record the lines that work elsewhere finished before it
        stopped. Starts nothing new. Default: nothing to collect."""
        return None
