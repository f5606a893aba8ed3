"""Alembic migrations and the Database wrapper, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect, text

from gateway.store.database import MIGRATIONS_DIR, Database, alembic_config, normalize_url
from gateway.store.models import Base

HEAD = "0004"  # the newest migration


async def _version(db: Database) -> list[str]:
    async with db.engine.connect() as conn:
        rows = await conn.execute(text("SELECT version_num FROM alembic_version"))
        return [row[0] for row in rows]


async def _tables(db: Database) -> set[str]:
    async with db.engine.connect() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))


async def test_migrate_creates_schema_and_is_idempotent(database_url: str) -> None:
    db = Database(database_url)
    try:
        await db.migrate()
        await db.migrate()
        assert await _version(db) == [HEAD]
        assert {"api_keys", "usage_events", "audit_events", "alembic_version"} <= await _tables(db)
    finally:
        await db.close()


async def test_migration_matches_models(database: Database) -> None:
    def diff(conn: Connection) -> list[Any]:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    async with database.engine.connect() as conn:
        assert await conn.run_sync(diff) == []


async def test_indexes_exist(database: Database) -> None:
    def indexes(conn: Connection) -> dict[str, set[str]]:
        inspector = inspect(conn)
        return {
            table: {index["name"] or "" for index in inspector.get_indexes(table)}
            for table in ("api_keys", "usage_events")
        }

    async with database.engine.connect() as conn:
        found = await conn.run_sync(indexes)
    assert found == {
        "api_keys": {"ix_api_keys_owner"},
        "usage_events": {"ix_usage_events_ts", "ix_usage_events_user", "ix_usage_events_model"},
    }


async def test_downgrade_to_base_and_up_again(database: Database) -> None:
    def downgrade(conn: Connection) -> None:
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")

    async with database.engine.begin() as conn:
        await conn.run_sync(downgrade)
    assert not {"api_keys", "usage_events"} & await _tables(database)
    await database.migrate()
    assert await _version(database) == [HEAD]


@pytest.mark.postgres
async def test_replicas_migrating_together_do_not_collide(postgres_url: str) -> None:
    replicas = [Database(postgres_url) for _ in range(4)]
    try:
        await asyncio.gather(*(db.migrate() for db in replicas))
        assert await _version(replicas[0]) == [HEAD]
    finally:
        for db in replicas:
            await db.close()


def test_migrations_ship_with_the_package() -> None:
    assert (MIGRATIONS_DIR / "env.py").is_file()
    assert (MIGRATIONS_DIR / "versions" / "0001_initial.py").is_file()
    assert alembic_config().get_main_option("script_location") == str(MIGRATIONS_DIR)


# --- Database ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("sqlite:///data/hearth.db", "sqlite+aiosqlite:///data/hearth.db"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("postgresql://u@db/hearth", "postgresql+asyncpg://u@db/hearth"),
        ("postgres://u@db/hearth", "postgresql+asyncpg://u@db/hearth"),
        ("postgresql+asyncpg://u@db/hearth", "postgresql+asyncpg://u@db/hearth"),
    ],
)
def test_normalize_url(given: str, expected: str) -> None:
    assert normalize_url(given).render_as_string(hide_password=False) == expected


@pytest.mark.parametrize("url", ["mysql://u@db/x", "postgresql+psycopg2://u@db/x"])
def test_normalize_url_rejects_unsupported(url: str) -> None:
    with pytest.raises(ValueError, match="unsupported"):
        normalize_url(url)


async def test_sqlite_file_gets_parent_dir_wal_and_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "hearth.db"
    db = Database(f"sqlite:///{path}")
    try:
        assert path.parent.is_dir()
        assert db.dialect == "sqlite"
        async with db.engine.connect() as conn:
            assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
            assert (await conn.execute(text("PRAGMA busy_timeout"))).scalar() == 5000
    finally:
        await db.close()


async def test_ping(database: Database) -> None:
    assert await database.ping()
    assert database.dialect in ("sqlite", "postgresql")


async def test_ping_is_false_when_unreachable() -> None:
    db = Database("postgresql://postgres:secret@127.0.0.1:1/nothing")
    try:
        assert not await db.ping(timeout_s=2)
        assert "secret" not in repr(db)
    finally:
        await db.close()
