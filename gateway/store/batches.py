"""Batches of the Batch API in the database, and their per-line checkpoints.

A running batch is *claimed* by one replica at a time with a lease (``claimed_by``,
``lease_until``) renewed while it works; a replica that dies loses its claims when the lease
ends and another takes them over. Writes that move a batch along are fenced: they only apply
while the writer still holds the claim. Finished lines go to ``batch_results`` keyed by
(batch, line): recording a line twice keeps the first result, so a resumed batch never has two
outputs for one input line.
"""

from __future__ import annotations

import builtins
import secrets
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from typing import Any

import orjson
from sqlalchemy import Integer, and_, delete, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from gateway.store.database import Database
from gateway.store.models import Batch, BatchResult, utcnow

__all__ = ["ACTIVE", "FINAL", "BatchStore", "batch_to_openai", "new_batch_id"]

ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")
FINAL = ("failed", "completed", "expired", "cancelled")
_TIMES = (
    "created_at", "in_progress_at", "expires_at", "finalizing_at", "completed_at", "failed_at",
    "expired_at", "cancelling_at", "cancelled_at",
)  # fmt: skip


def new_batch_id() -> str:
    return "batch_" + secrets.token_hex(12)


def batch_to_openai(b: Batch) -> dict[str, Any]:
    """The Batch object (https://platform.openai.com/docs/api-reference/batch/object)."""
    errors = orjson.loads(b.errors_json) if b.errors_json else None
    out: dict[str, Any] = {
        "id": b.id,
        "object": "batch",
        "endpoint": b.endpoint,
        "errors": {"object": "list", "data": errors} if errors else None,
        "input_file_id": b.input_file_id,
        "completion_window": b.completion_window,
        "status": b.status,
        "output_file_id": b.output_file_id,
        "error_file_id": b.error_file_id,
    }
    for name in _TIMES:
        value = getattr(b, name)
        out[name] = None if value is None else int(value.timestamp())
    out["request_counts"] = {"total": b.total, "completed": b.completed, "failed": b.failed}
    out["metadata"] = orjson.loads(b.metadata_json) if b.metadata_json else None
    return out


class BatchStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(
        self,
        *,
        owner: str,
        principal: str,
        endpoint: str,
        input_file_id: str,
        completion_window: timedelta,
        window_name: str,
        metadata: dict[str, str] | None,
    ) -> Batch:
        now = utcnow()
        row = Batch(
            id=new_batch_id(), owner=owner, principal=principal, endpoint=endpoint,
            input_file_id=input_file_id, completion_window=window_name, status="validating",
            metadata_json=orjson.dumps(metadata).decode() if metadata else None,
            total=0, completed=0, failed=0, created_at=now, expires_at=now + completion_window,
        )  # fmt: skip
        async with self._db.session() as session:
            session.add(row)
            await session.commit()
        return row

    async def get(self, batch_id: str, owner: str | None = None) -> Batch | None:
        async with self._db.session() as session:
            row = await session.get(Batch, batch_id)
        if row is None or (owner is not None and row.owner != owner):
            return None
        return row

    async def list(self, owner: str, *, after: str | None = None, limit: int = 20) -> builtins.list[Batch]:
        """Newest first; ``after`` is the id of the last batch of the previous page."""
        stmt = select(Batch).where(Batch.owner == owner)
        if after is not None:
            anchor = await self.get(after, owner)
            if anchor is not None:
                stmt = stmt.where(
                    or_(
                        Batch.created_at < anchor.created_at,
                        and_(Batch.created_at == anchor.created_at, Batch.id < anchor.id),
                    )
                )
        stmt = stmt.order_by(Batch.created_at.desc(), Batch.id.desc()).limit(limit)
        async with self._db.session() as session:
            return builtins.list((await session.scalars(stmt)).all())

    async def count_active(self, owner: str) -> int:
        stmt = select(func.count()).select_from(Batch).where(Batch.owner == owner, Batch.status.in_(ACTIVE))
        async with self._db.session() as session:
            return int((await session.execute(stmt)).scalar() or 0)

    async def claimable(self, replica: str) -> builtins.list[str]:
        """Ids of active batches nobody holds (or this replica holds), oldest first."""
        now = utcnow()
        stmt = (
            select(Batch.id)
            .where(
                Batch.status.in_(ACTIVE),
                or_(Batch.claimed_by.is_(None), Batch.lease_until < now, Batch.claimed_by == replica),
            )
            .order_by(Batch.created_at)
        )
        async with self._db.session() as session:
            return builtins.list((await session.scalars(stmt)).all())

    async def claim(self, batch_id: str, replica: str, lease_s: float) -> bool:
        """Take (or renew) the claim on an active batch; False if another replica holds it."""
        now = utcnow()
        stmt = (
            update(Batch)
            .where(
                Batch.id == batch_id,
                Batch.status.in_(ACTIVE),
                or_(Batch.claimed_by.is_(None), Batch.lease_until < now, Batch.claimed_by == replica),
            )
            .values(claimed_by=replica, lease_until=now + timedelta(seconds=lease_s))
        )
        async with self._db.session() as session:
            result = await session.execute(stmt)
            await session.commit()
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def release(self, batch_id: str, replica: str) -> None:
        stmt = (
            update(Batch)
            .where(Batch.id == batch_id, Batch.claimed_by == replica)
            .values(claimed_by=None, lease_until=None)
        )
        async with self._db.session() as session:
            await session.execute(stmt)
            await session.commit()

    async def update(self, batch_id: str, replica: str, **values: Any) -> bool:
        """Change a batch this replica holds; False (nothing changed) if it lost the claim."""
        stmt = update(Batch).where(Batch.id == batch_id, Batch.claimed_by == replica).values(**values)
        async with self._db.session() as session:
            result = await session.execute(stmt)
            await session.commit()
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def request_cancel(self, batch_id: str, owner: str) -> Batch | None:
        """Ask for a batch to be cancelled (its runner finishes the job); None if not theirs."""
        stmt = (
            update(Batch)
            .where(
                Batch.id == batch_id, Batch.owner == owner, Batch.status.in_(("validating", "in_progress"))
            )
            .values(status="cancelling", cancelling_at=utcnow())
        )
        async with self._db.session() as session:
            await session.execute(stmt)
            await session.commit()
        return await self.get(batch_id, owner)

    async def progress(self, batch_id: str, completed: int, failed: int) -> None:
        """Progress counters (not fenced: any holder's latest count is right)."""
        stmt = update(Batch).where(Batch.id == batch_id).values(completed=completed, failed=failed)
        async with self._db.session() as session:
            await session.execute(stmt)
            await session.commit()

    async def status(self, batch_id: str) -> str | None:
        async with self._db.session() as session:
            return (await session.execute(select(Batch.status).where(Batch.id == batch_id))).scalar()

    # -- line checkpoints

    async def record(self, batch_id: str, results: Sequence[tuple[int, bool, str]]) -> None:
        """Checkpoint finished lines ``(line, ok, output JSON)``; a line already recorded keeps
        its first result."""
        if not results:
            return
        rows = [{"batch_id": batch_id, "line": line, "ok": ok, "output": out} for line, ok, out in results]
        async with self._db.engine.begin() as conn:
            insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
            await conn.execute(insert(BatchResult).on_conflict_do_nothing(), rows)

    async def done_lines(self, batch_id: str) -> set[int]:
        async with self._db.session() as session:
            rows = await session.scalars(select(BatchResult.line).where(BatchResult.batch_id == batch_id))
            return set(rows.all())

    async def counts(self, batch_id: str) -> tuple[int, int]:
        """(completed, failed) lines so far."""
        stmt = select(func.coalesce(func.sum(func.cast(BatchResult.ok, Integer)), 0), func.count()).where(
            BatchResult.batch_id == batch_id
        )
        async with self._db.session() as session:
            ok, n = (await session.execute(stmt)).one()
        return int(ok), int(n) - int(ok)

    async def results(self, batch_id: str, *, chunk: int = 2000) -> AsyncIterator[tuple[int, bool, str]]:
        """Every recorded line, in input order."""
        last = 0
        while True:
            stmt = (
                select(BatchResult.line, BatchResult.ok, BatchResult.output)
                .where(BatchResult.batch_id == batch_id, BatchResult.line > last)
                .order_by(BatchResult.line)
                .limit(chunk)
            )
            async with self._db.session() as session:
                rows = (await session.execute(stmt)).all()
            if not rows:
                return
            for line, ok, output in rows:
                yield int(line), bool(ok), str(output)
            last = int(rows[-1][0])

    async def delete_results(self, batch_id: str) -> None:
        async with self._db.session() as session:
            await session.execute(delete(BatchResult).where(BatchResult.batch_id == batch_id))
            await session.commit()
