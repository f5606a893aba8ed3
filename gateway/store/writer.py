"""A background writer: records queued without blocking, written in batches.

The request path calls :meth:`BatchWriter.record`, which only appends to an in-memory queue; a
background task writes the queue with one multi-row INSERT per batch. If the database is down
the batch is kept and retried with backoff, so an outage costs memory (up to ``max_queue``
records; beyond that the oldest are dropped and counted), not data.

Delivery is at-least-once: a commit whose acknowledgement is lost is retried and may be
written twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Generic, Protocol, TypeVar

from sqlalchemy import FromClause, insert
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError

from gateway.store.database import Database

__all__ = ["BatchWriter"]

log = logging.getLogger(__name__)

_DROP_WARNING_EVERY_S = 60.0
# Rows per executemany: preparing them holds the loop ~0.1 ms on SQLite (its timestamp
# formatting is most of it), less on PostgreSQL.
_SLICE_ROWS = 50


class _Row(Protocol):
    """A record is a named tuple of some of the table's columns (typing.NamedTuple)."""

    @property
    def _fields(self) -> tuple[str, ...]: ...

    def __iter__(self) -> Iterator[Any]: ...

    def __getitem__(self, index: int, /) -> Any: ...


R = TypeVar("R", bound=_Row)


class BatchWriter(Generic[R]):
    """Queues records without blocking and writes them to ``table`` in the background.

    A record is a named tuple whose field names are columns of ``table``; in the table's
    column order, it goes to the driver as it is (only the values whose column type needs a
    conversion, such as timestamps on SQLite, are converted).

    Use from the event loop's thread only. ``start()`` once the loop runs; ``stop()`` on
    shutdown writes what is left (giving up after ``timeout_s`` if the database stays down).
    """

    def __init__(
        self,
        db: Database,
        table: FromClause,
        *,
        name: str,
        batch_size: int = 500,
        flush_interval_s: float = 1.0,
        max_queue: int = 100_000,
        max_backoff_s: float = 30.0,
    ) -> None:
        if batch_size < 1 or max_queue < 1:
            raise ValueError("batch_size and max_queue must be at least 1")
        if flush_interval_s <= 0 or max_backoff_s <= 0:
            raise ValueError("flush_interval_s and max_backoff_s must be positive")
        self._db = db
        self._table = table
        self._insert: _DriverInsert | None = None  # compiled on first use, for the engine's dialect
        self._name = name
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._max_backoff_s = max_backoff_s
        self._queue: deque[R] = deque(maxlen=max_queue)
        self._batch: list[R] = []  # taken off the queue, not yet committed
        self._lock = asyncio.Lock()
        self._work = asyncio.Event()  # a full batch is waiting, or stop() was called
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._written = 0
        self._dropped = 0
        self._write_errors = 0
        self._last_drop_warning = -math.inf

    @property
    def written(self) -> int:
        """Records committed to the database."""
        return self._written

    @property
    def dropped(self) -> int:
        """Records discarded because the queue was full."""
        return self._dropped

    @property
    def pending(self) -> int:
        """Records accepted but not yet committed."""
        return len(self._queue) + len(self._batch)

    @property
    def write_errors(self) -> int:
        """Failed batch writes (each is retried)."""
        return self._write_errors

    def record(self, rec: R) -> None:
        """Queue ``rec``; never blocks. When the queue is full the oldest record is dropped."""
        if len(self._queue) == self._queue.maxlen:
            self._dropped += 1
            now = time.monotonic()
            if now - self._last_drop_warning >= _DROP_WARNING_EVERY_S:
                self._last_drop_warning = now
                log.warning(
                    "%s queue full (%d records): dropping the oldest, %d dropped so far",
                    self._name,
                    self._queue.maxlen,
                    self._dropped,
                )
        self._queue.append(rec)
        if len(self._queue) >= self._batch_size:
            self._work.set()

    async def start(self) -> None:
        """Start the background writer (a no-op if it is running)."""
        if self._task is not None:
            return
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name=f"hearth-{self._name}-writer")

    async def flush(self) -> None:
        """Write everything queued so far, one INSERT per batch.

        Raises the database error if a write fails; the failed batch stays pending.
        """
        async with self._lock:
            remaining = len(self._queue)
            while self._batch or remaining:
                if not self._batch:
                    take = min(self._batch_size, remaining, len(self._queue))
                    if take == 0:
                        return
                    self._batch = [self._queue.popleft() for _ in range(take)]
                    remaining -= take
                await self._write(self._batch)
                self._written += len(self._batch)
                self._batch = []

    async def stop(self, timeout_s: float | None = 30.0) -> None:
        """Write everything that is pending, then stop the background writer.

        Retries a failing database until ``timeout_s`` has passed, then gives up and logs how
        many records were lost. Without a running writer this is just :meth:`flush`.
        """
        task = self._task
        if task is None:
            await self.flush()
            return
        self._stopping.set()
        self._work.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout_s)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            log.error("%s writer stopped with %d records unwritten", self._name, self.pending)
        finally:
            self._task = None

    async def _run(self) -> None:
        failures = 0
        while True:
            if failures == 0:
                await _wait(self._work, self._flush_interval_s)
            else:
                delay = min(self._flush_interval_s * 2**failures, self._max_backoff_s)
                if self._stopping.is_set():
                    await asyncio.sleep(delay)
                else:
                    await _wait(self._stopping, delay)
            self._work.clear()
            stopping = self._stopping.is_set()
            try:
                await self.flush()
            except Exception as exc:  # the database is down or refusing: keep, back off, retry
                failures += 1
                self._write_errors += 1
                log.error(
                    "writing %s records failed (attempt %d, %d pending): %s",
                    self._name,
                    failures,
                    self.pending,
                    _describe(exc),
                )
                continue
            failures = 0
            if stopping:
                return

    async def _write(self, batch: list[R]) -> None:
        # The statement goes to the driver as it is (`exec_driver_sql`): SQLAlchemy's per-row
        # parameter processing ran on the event loop's thread and cost more CPU than the rest
        # of a request's bookkeeping (docs/performance.md); the type conversions it would make
        # are applied here, once per column that needs one. Slices keep the loop's share short
        # (asyncpg encodes on the loop's thread); one transaction still holds the batch.
        engine = self._db.engine
        if self._insert is None:
            self._insert = _DriverInsert(self._table, engine.dialect, batch[0]._fields)
        params = self._insert.params
        async with engine.begin() as conn:
            for start in range(0, len(batch), _SLICE_ROWS):
                rows = [params(rec) for rec in batch[start : start + _SLICE_ROWS]]
                await conn.exec_driver_sql(self._insert.sql, rows)


class _DriverInsert:
    """An INSERT of some of a table's columns, compiled for one dialect, and a record's values
    as that dialect's driver takes them: SQLAlchemy's own bind processing, applied only to the
    columns whose type has one (timestamps on SQLite, booleans), and the record itself when
    its fields are in the statement's order and no column needs a conversion."""

    def __init__(self, table: FromClause, dialect: Dialect, fields: Sequence[str]) -> None:
        compiled = insert(table).compile(dialect=dialect, column_keys=list(fields))  # type: ignore[arg-type]
        self.sql = str(compiled)
        positional = bool(compiled.positional)
        names: tuple[str, ...] = tuple(compiled.positiontup or ()) if positional else tuple(fields)
        if sorted(names) != sorted(fields):
            raise ValueError(f"the INSERT's parameters {names} are not the record's fields {tuple(fields)}")
        order = tuple(fields.index(name) for name in names)
        processors: list[tuple[int, Callable[[Any], Any]]] = []
        for i, name in enumerate(names):
            process = table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
            if process is not None:
                processors.append((i, process))
        self._names = names
        self._order = None if order == tuple(range(len(order))) else order
        self._processors = tuple(processors)
        self._positional = positional
        self._as_is = positional and self._order is None and not self._processors

    def params(self, record: _Row) -> tuple[Any, ...] | dict[str, Any]:
        if self._as_is:
            return record  # type: ignore[return-value]  # a NamedTuple is the tuple
        values = list(record) if self._order is None else [record[i] for i in self._order]
        for i, process in self._processors:
            values[i] = process(values[i])
        if self._positional:
            return tuple(values)  # the driver layer takes tuples, not lists
        return dict(zip(self._names, values, strict=True))


async def _wait(event: asyncio.Event, timeout_s: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout_s)


def _describe(exc: BaseException) -> str:
    """A one-line reason for the log: the driver's message, without SQL or parameters."""
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    first_line = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    return f"{type(cause).__name__}: {first_line[:200]}"
