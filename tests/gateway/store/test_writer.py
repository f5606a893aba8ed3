"""The writer's driver-level INSERT: a record to the driver's parameters, for each paramstyle."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import NamedTuple

import pytest
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite

from gateway.store.audit import AuditLog, AuditRecord
from gateway.store.database import Database
from gateway.store.models import AuditEvent
from gateway.store.writer import _DriverInsert

TABLE = AuditEvent.__table__
TS = datetime(2030, 1, 2, 3, 4, 5, 6, tzinfo=UTC)


class Reordered(NamedTuple):  # the audit columns, not in the table's order
    outcome: str
    actor: str
    ts: datetime
    action: str


def test_a_record_in_column_order_is_passed_as_it_is() -> None:
    dialect = postgresql.asyncpg.dialect()  # type: ignore[attr-defined]
    ins = _DriverInsert(TABLE, dialect, AuditRecord._fields)
    rec = AuditRecord(ts=TS, actor="a", action="key.create", outcome="ok")
    assert ins.params(rec) == (TS, "a", "key.create", "ok", None, None, None)


def test_sqlite_gets_text_timestamps_in_the_statements_order() -> None:
    ins = _DriverInsert(TABLE, sqlite.dialect(), Reordered._fields)
    assert ins.sql.startswith("INSERT INTO audit_events (ts, actor, action, outcome) VALUES (?, ?, ?, ?)")
    rec = Reordered(outcome="ok", actor="a", ts=TS, action="key.create")
    assert ins.params(rec) == ("2030-01-02 03:04:05.000006", "a", "key.create", "ok")


def test_a_named_paramstyle_gets_a_dict() -> None:
    ins = _DriverInsert(TABLE, postgresql.psycopg.dialect(), Reordered._fields)  # type: ignore[attr-defined]
    assert "%(actor)s" in ins.sql
    rec = Reordered(outcome="ok", actor="a", ts=TS, action="key.create")
    params = ins.params(rec)
    assert params == {"ts": TS, "actor": "a", "action": "key.create", "outcome": "ok"}


def test_a_field_that_is_not_a_column_is_refused() -> None:
    class Stray(NamedTuple):
        ts: datetime
        prompt: str

    with pytest.raises(ValueError, match="not the record's fields"):
        _DriverInsert(TABLE, sqlite.dialect(), Stray._fields)


async def test_audit_names_longer_than_their_columns_are_cut(database: Database) -> None:
    audit = AuditLog(database)
    audit.log("x" * 300, "key.revoke", "ok", target="k" * 300, detail="d" * 300)
    await audit.flush()
    async with database.session() as session:
        (row,) = (await session.scalars(select(AuditEvent))).all()
    assert (row.actor, row.target, row.detail) == ("x" * 255, "k" * 255, "d" * 300)
