"""Usage accounting: one :class:`UsageRecord` per relayed request, written in batches.

Written by a :class:`gateway.store.writer.BatchWriter`: the request path only appends to an
in-memory queue. Records hold counts and timings only, never prompts or completions.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

from gateway.store.database import Database
from gateway.store.models import UsageEvent
from gateway.store.writer import BatchWriter

__all__ = ["UsageRecord", "UsageRecorder"]


class UsageRecord(NamedTuple):
    """What the gateway keeps about one request: a row of ``usage_events`` without its id,
    fields in the table's column order (the writer hands the tuple to the driver as it is)."""

    ts: datetime
    request_id: str
    user: str
    api_key_id: str | None
    model: str
    cluster: str
    upstream: str
    endpoint: str  # the OpenAI operation, e.g. "chat.completions"
    status: int
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    ttft_ms: float | None
    stream: bool


class UsageRecorder(BatchWriter[UsageRecord]):
    """Usage records into ``usage_events``. Use from the event loop's thread only."""

    def __init__(self, db: Database, **options: Any) -> None:
        super().__init__(db, UsageEvent.__table__, name="usage", **options)
