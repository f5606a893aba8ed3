"""Usage accounting: one :class:`UsageRecord` per relayed request, written in batches.

Written by a :class:`gateway.store.writer.BatchWriter`: the request path only appends to an
in-memory queue. Records hold counts and timings only, never prompts or completions.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from gateway.store.database import Database
from gateway.store.models import UsageEvent
from gateway.store.writer import BatchWriter

__all__ = ["UsageRecord", "UsageRecorder"]


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageRecord:
    """What the gateway keeps about one request (a row of ``usage_events`` without its id)."""

    ts: datetime
    request_id: str
    user: str
    api_key_id: str | None = None
    model: str
    cluster: str
    upstream: str
    endpoint: str  # the OpenAI operation, e.g. "chat.completions"
    status: int
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    ttft_ms: float | None = None
    stream: bool

    def as_row(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _FIELDS}


_FIELDS = tuple(f.name for f in fields(UsageRecord))


class UsageRecorder(BatchWriter[UsageRecord]):
    """Usage records into ``usage_events``. Use from the event loop's thread only."""

    def __init__(self, db: Database, **options: Any) -> None:
        super().__init__(db, UsageEvent.__table__, name="usage", **options)
