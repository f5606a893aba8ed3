"""Small batches through the gateway's own dispatcher, to the workers that are up (hot).

Each line is one ordinary request as the batch's owner: routing, failover and usage records
are the interactive path's. Concurrency is bounded per batch (``line_concurrency``) and per
replica for all batches together (``max_concurrent_lines``), so interactive requests keep the
rest of the workers' capacity. A line that meets a busy or failing worker (429, 5xx, no worker)
is retried with backoff (for about 15 s) before its error is recorded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

import orjson

from gateway.auth.principal import Principal
from gateway.batch.executor import BatchExecutor, BatchLine, BatchSpec, LineResult, Recorder
from gateway.errors import HearthError
from gateway.relay.dispatch import CallContext, Dispatcher

__all__ = ["HotExecutor"]

log = logging.getLogger(__name__)

_RETRY = frozenset({429, 500, 502, 503, 504})


class HotExecutor(BatchExecutor):
    def __init__(
        self,
        dispatcher: Dispatcher,
        principal: Principal,
        *,
        line_concurrency: int,
        replica_slots: asyncio.Semaphore,
        attempts: int = 6,
        backoff_s: float = 0.5,
    ) -> None:
        self._dispatcher = dispatcher
        self._principal = principal
        self._concurrency = line_concurrency
        self._slots = replica_slots
        self._attempts = attempts
        self._backoff_s = backoff_s

    async def run(
        self, spec: BatchSpec, lines: list[BatchLine], record: Recorder, stop: asyncio.Event
    ) -> None:
        pending: Iterator[BatchLine] = iter(lines)

        async def worker() -> None:
            for line in pending:  # the iterator is shared: each line goes to one worker
                if stop.is_set():
                    return
                async with self._slots:
                    result = await self._execute(spec, line, stop)
                if result is not None:
                    await record(result)

        await asyncio.gather(*(worker() for _ in range(min(self._concurrency, max(len(lines), 1)))))

    async def _execute(self, spec: BatchSpec, line: BatchLine, stop: asyncio.Event) -> LineResult | None:
        endpoint = spec.endpoint.removeprefix("/v1/")
        request_id = f"{spec.batch_id}-{line.line}"[:64]
        status, body = 0, None
        for attempt in range(self._attempts):
            if stop.is_set():
                return None  # not executed: the runner accounts for it
            ctx = CallContext(
                self._principal, request_id, endpoint.replace("/", "."), endpoint, time.perf_counter()
            )
            try:
                reply = await self._dispatcher.unary(ctx, dict(line.body))
                status, body = reply.status, _json(reply.body)
            except HearthError as exc:
                status, body = exc.status, exc.body()
            if status not in _RETRY or attempt == self._attempts - 1:
                break
            # 0.5, 1, 2, 4, 8 s: longer than a failing worker's cooldown, so one bad moment of
            # the only worker does not fail lines that could simply wait.
            await asyncio.sleep(min(self._backoff_s * 2**attempt, 10.0))
        usage = (body or {}).get("usage") or {}
        return LineResult(
            line=line.line,
            custom_id=line.custom_id,
            status_code=status,
            body=body,
            request_id=request_id,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
        )


def _json(raw: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {"error": {"message": raw[:500].decode(errors="replace"), "type": "server_error"}}
    return value if isinstance(value, dict) else {"data": value}
