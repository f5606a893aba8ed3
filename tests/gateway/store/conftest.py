"""Store fixtures: every test runs against a SQLite file and against the machine's PostgreSQL.

PostgreSQL (127.0.0.1:5432, trust auth, user ``postgres``, database ``test``) must be up: a
test that needs it fails rather than skips when it is not, because CI always has it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.store.database import Database
from tests.support.postgres import postgres_database


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The URL of an empty database (no tables yet)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'db' / 'hearth.db'}"
        return
    async with postgres_database() as url:
        yield url


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """An empty PostgreSQL database, for the few tests that are about PostgreSQL only."""
    async with postgres_database() as url:
        yield url


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    """A migrated :class:`Database`, closed afterwards."""
    db = Database(database_url)
    await db.migrate()
    try:
        yield db
    finally:
        await db.close()
