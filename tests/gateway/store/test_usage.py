"""UsageRecorder against SQLite and PostgreSQL: batching, shutdown, outages, overflow."""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, func, select, text

from gateway.store.audit import AuditRecord
from gateway.store.database import Database
from gateway.store.models import AuditEvent, UsageEvent
from gateway.store.usage import UsageRecord, UsageRecorder
from gateway.store.writer import _SLICE_ROWS

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def make_record(i: int) -> UsageRecord:
    return UsageRecord(
        ts=T0 + timedelta(milliseconds=i),
        request_id=f"req-{i}",
        user="alice",
        api_key_id="abcdefghijkl" if i % 2 else None,
        model="llama-3-8b",
        cluster="polaris",
        upstream="http://10.0.0.5:8000",
        endpoint="chat.completions",
        status=200,
        prompt_tokens=10 + i,
        completion_tokens=20,
        latency_ms=123.5,
        ttft_ms=12.25 if i % 2 else None,
        stream=bool(i % 2),
    )


async def _stored(db: Database) -> list[UsageEvent]:
    async with db.session() as session:
        return list((await session.scalars(select(UsageEvent).order_by(UsageEvent.id))).all())


async def _count(db: Database) -> int:
    async with db.session() as session:
        return int((await session.scalar(select(func.count()).select_from(UsageEvent))) or 0)


async def _eventually(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


@contextmanager
def count_inserts(db: Database) -> Iterator[list[str]]:
    """The INSERT statements into usage_events sent to the driver while the block runs."""
    seen: list[str] = []

    def before(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT") and "usage_events" in statement:
            seen.append(statement)

    event.listen(db.engine.sync_engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", before)


def inserts_for(n: int, batch_size: int) -> int:
    """INSERT round trips for `n` records: each batch is written in slices of `_SLICE_ROWS`
    (so the event loop is never held long), one transaction per batch."""
    full, rest = divmod(n, batch_size)
    return full * math.ceil(batch_size / _SLICE_ROWS) + math.ceil(rest / _SLICE_ROWS)


async def take_table_offline(db: Database) -> None:
    async with db.engine.begin() as conn:
        await conn.execute(text("ALTER TABLE usage_events RENAME TO usage_events_offline"))


async def bring_table_back(db: Database) -> None:
    async with db.engine.begin() as conn:
        await conn.execute(text("ALTER TABLE usage_events_offline RENAME TO usage_events"))


async def test_records_are_written_in_batches(database: Database) -> None:
    recorder = UsageRecorder(database, batch_size=500)
    n = 1234
    for i in range(n):
        recorder.record(make_record(i))
    assert recorder.pending == n
    assert recorder.written == 0
    with count_inserts(database) as inserts:
        await recorder.flush()
    assert len(inserts) == inserts_for(n, 500)
    assert (recorder.written, recorder.pending, recorder.dropped) == (n, 0, 0)
    assert await _count(database) == n


async def test_rows_round_trip(database: Database) -> None:
    recorder = UsageRecorder(database)
    records = [make_record(i) for i in range(3)]
    for rec in records:
        recorder.record(rec)
    await recorder.flush()
    rows = await _stored(database)
    assert [UsageRecord(**{f: getattr(r, f) for f in _fields()}) for r in rows] == records
    assert all(r.ts.tzinfo == UTC for r in rows)


async def test_background_writer_flushes_on_interval(database: Database) -> None:
    recorder = UsageRecorder(database, batch_size=500, flush_interval_s=0.05)
    await recorder.start()
    try:
        for i in range(3):
            recorder.record(make_record(i))
        await _eventually(lambda: recorder.written == 3)
    finally:
        await recorder.stop()
    assert await _count(database) == 3


async def test_full_batch_is_written_without_waiting_for_the_interval(database: Database) -> None:
    recorder = UsageRecorder(database, batch_size=50, flush_interval_s=3600)
    await recorder.start()
    try:
        for i in range(50):
            recorder.record(make_record(i))
        await _eventually(lambda: recorder.written == 50, timeout_s=5)
    finally:
        await recorder.stop()


async def test_stop_writes_everything(database: Database) -> None:
    recorder = UsageRecorder(database, batch_size=100, flush_interval_s=3600)
    await recorder.start()
    await asyncio.sleep(0)
    for i in range(1234):
        recorder.record(make_record(i))
    with count_inserts(database) as inserts:
        await recorder.stop()
    assert recorder.pending == 0
    assert recorder.written == 1234
    assert len(inserts) == inserts_for(1234, 100)
    assert await _count(database) == 1234


async def test_stop_without_start_flushes(database: Database) -> None:
    recorder = UsageRecorder(database)
    recorder.record(make_record(0))
    await recorder.stop()
    assert await _count(database) == 1


async def test_failed_flush_keeps_the_batch(database: Database) -> None:
    recorder = UsageRecorder(database, batch_size=4)
    for i in range(10):
        recorder.record(make_record(i))
    await take_table_offline(database)
    with pytest.raises(Exception, match="usage_events"):
        await recorder.flush()
    assert (recorder.pending, recorder.written) == (10, 0)
    await bring_table_back(database)
    await recorder.flush()
    assert (recorder.pending, recorder.written) == (0, 10)
    assert [r.request_id for r in await _stored(database)] == [f"req-{i}" for i in range(10)]


async def test_outage_then_recovery_loses_nothing(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="gateway.store.usage")
    recorder = UsageRecorder(database, batch_size=8, flush_interval_s=0.02, max_backoff_s=0.1)
    await recorder.start()
    try:
        await take_table_offline(database)
        for i in range(20):
            recorder.record(make_record(i))
        await _eventually(lambda: recorder.write_errors >= 3)
        for i in range(20, 30):
            recorder.record(make_record(i))  # still accepted during the outage
        assert recorder.written == 0
        assert recorder.pending == 30
        await bring_table_back(database)
        await _eventually(lambda: recorder.written == 30)
    finally:
        await recorder.stop()
    ids = [r.request_id for r in await _stored(database)]
    assert sorted(ids) == sorted(f"req-{i}" for i in range(30))  # nothing lost, nothing twice
    assert "writing usage records failed" in caplog.text
    assert "req-" not in caplog.text
    assert "alice" not in caplog.text


async def test_stop_gives_up_after_timeout_when_db_stays_down(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = UsageRecorder(database, flush_interval_s=0.02, max_backoff_s=0.05)
    await recorder.start()
    await take_table_offline(database)
    recorder.record(make_record(0))
    started = time.monotonic()
    await recorder.stop(timeout_s=0.5)
    assert time.monotonic() - started < 5
    assert recorder.pending == 1
    assert "1 records unwritten" in caplog.text
    await bring_table_back(database)


async def test_full_queue_drops_oldest_and_warns_once(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.store.usage")
    recorder = UsageRecorder(database, max_queue=10)
    for i in range(15):
        recorder.record(make_record(i))
    assert (recorder.dropped, recorder.pending) == (5, 10)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    await recorder.flush()
    assert [r.request_id for r in await _stored(database)] == [f"req-{i}" for i in range(5, 15)]


def test_record_is_synchronous() -> None:
    assert not inspect.iscoroutinefunction(UsageRecorder.record)


def _fields() -> list[str]:
    return list(UsageRecord._fields)


async def test_no_prompts_or_completions_are_stored(database: Database) -> None:
    expected = {
        "ts",
        "request_id",
        "user",
        "api_key_id",
        "model",
        "cluster",
        "upstream",
        "endpoint",
        "status",
        "prompt_tokens",
        "completion_tokens",
        "latency_ms",
        "ttft_ms",
        "stream",
    }
    assert set(_fields()) == expected
    assert {c.name for c in UsageEvent.__table__.columns} == expected | {"id"}
    with pytest.raises(TypeError):
        UsageRecord(**make_record(0)._asdict(), prompt="secret prompt")  # type: ignore[call-arg]


def test_records_are_in_the_tables_column_order() -> None:
    """So the writer hands each record to the driver as it is (no reordering, no dict)."""
    assert UsageRecord._fields == tuple(c.name for c in UsageEvent.__table__.columns if c.name != "id")
    assert AuditRecord._fields == tuple(c.name for c in AuditEvent.__table__.columns if c.name != "id")
