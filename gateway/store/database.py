"""One database connection pool: async engine, sessions, migrations, health.

SQLite (a file) is the embedded default, PostgreSQL the production database. Plain URLs are
accepted and given their async driver: ``sqlite:///path`` → ``sqlite+aiosqlite``,
``postgresql://`` (or ``postgres://``) → ``postgresql+asyncpg``.
See https://docs.sqlalchemy.org/en/20/orm/extensions/asyncio.html
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

__all__ = ["MIGRATIONS_DIR", "Database", "alembic_config", "normalize_url"]

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

SQLITE_BUSY_TIMEOUT_MS = 5_000
# Any constant will do; it only has to be the same for every gateway replica.
_PG_MIGRATION_LOCK = 0x4845_4152_5448  # "HEARTH"

_SQLITE_ASYNC_DRIVERS = {"aiosqlite"}
_PG_ASYNC_DRIVERS = {"asyncpg", "psycopg"}


def normalize_url(url: str | URL) -> URL:
    """``url`` with an async driver; ``ValueError`` for a backend Hearth does not support."""
    parsed = make_url(url)
    backend, _, driver = parsed.drivername.partition("+")
    if backend == "sqlite":
        if driver not in _SQLITE_ASYNC_DRIVERS:
            if driver and driver != "pysqlite":
                raise ValueError(f"unsupported SQLite driver {driver!r}; use sqlite:///path")
            parsed = parsed.set(drivername="sqlite+aiosqlite")
    elif backend in ("postgresql", "postgres"):
        if driver not in _PG_ASYNC_DRIVERS:
            if driver:
                raise ValueError(
                    f"unsupported PostgreSQL driver {driver!r}; use postgresql:// "
                    "(asyncpg) or postgresql+psycopg://"
                )
            parsed = parsed.set(drivername="postgresql+asyncpg")
        elif backend == "postgres":
            parsed = parsed.set(drivername=f"postgresql+{driver}")
    else:
        raise ValueError(f"unsupported database {backend!r}: use sqlite:/// or postgresql://")
    return parsed


def alembic_config(url: str | URL | None = None) -> Config:
    """An Alembic configuration for Hearth's migrations, built in code (no alembic.ini).

    ``url`` is only needed when Alembic opens its own connection (e.g. to autogenerate a new
    revision); :meth:`Database.migrate` hands Alembic a live connection instead.
    """
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    if url is not None:
        rendered = normalize_url(url).render_as_string(hide_password=False)
        cfg.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return cfg


def _upgrade_head(connection: Connection) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        # WAL lets readers proceed during a write; the busy timeout makes a writer wait for
        # the lock instead of failing at once with "database is locked".
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS:d}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


class Database:
    """An async engine and session factory for one database URL.

    Build one per application (``create_app``) or per test; nothing is created at import.
    """

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self._url = normalize_url(url)
        if self._url.get_backend_name() == "sqlite":
            _create_parent_dir(self._url)
        self._engine: AsyncEngine = create_async_engine(
            self._url,
            echo=echo,
            pool_pre_ping=True,
            # Exceptions and echo logs then show SQL without values: no digests in logs.
            hide_parameters=True,
        )
        if self.dialect == "sqlite":
            event.listen(self._engine.sync_engine, "connect", _sqlite_on_connect)
        self._sessions = async_sessionmaker(self._engine, expire_on_commit=False)

    def __repr__(self) -> str:
        return f"Database({self.url!r})"

    @property
    def url(self) -> str:
        """The normalised URL with any password masked, fit for logs."""
        return self._url.render_as_string(hide_password=True)

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._engine.dialect.name

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    def session(self) -> AsyncSession:
        """A new session (use as ``async with db.session() as s:``); objects survive commit."""
        return self._sessions()

    async def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision; a no-op when it is already there.

        On PostgreSQL a transaction-scoped advisory lock serialises replicas that start
        together; the whole upgrade runs in one transaction.
        """
        async with self._engine.begin() as conn:
            if self.dialect == "postgresql":
                await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
            await conn.run_sync(_upgrade_head)

    async def ping(self, timeout_s: float = 2.0) -> bool:
        """Whether the database answers ``SELECT 1`` within ``timeout_s`` seconds."""
        try:
            async with asyncio.timeout(timeout_s), self._engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as exc:  # any failure means "not healthy"; the reason goes to the log
            log.warning("database ping failed: %s", type(exc).__name__)
            return False
        return True

    async def close(self) -> None:
        """Close every pooled connection."""
        await self._engine.dispose()


def _create_parent_dir(url: URL) -> None:
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return
    Path(database).parent.mkdir(parents=True, exist_ok=True)
