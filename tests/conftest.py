"""Shared fixtures: real sim engines and real gateways on loopback, over SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.support.gateway import Gateway, Sim, start_gateway, start_sim, upstream
from tests.support.postgres import postgres_database

pytest_plugins = ["tests.support.slurm_fixtures", "tests.support.globus_fixtures"]


@pytest.fixture(scope="session")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where server logs go (shown by failing tests)."""
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def sim(logs: Path) -> Iterator[Sim]:
    """A fast sim engine (tiny delays) shared by the session."""
    s = start_sim(logs, ttft_ms=5, itl_ms=1)
    yield s
    s.proc.stop()


@pytest.fixture(scope="session", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def store_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    """An empty store: a SQLite file, or a fresh database on the machine's PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('store') / 'hearth.db'}"
        return
    async with postgres_database() as url:
        yield url


@pytest.fixture(scope="session")
def gateway(logs: Path, sim: Sim, store_url: str) -> Iterator[Gateway]:
    """A gateway in front of the shared sim engine, on each store backend."""
    gw = start_gateway(logs, clusters={"local": {"upstreams": [upstream(sim, "sim")]}}, store_url=store_url)
    yield gw
    gw.stop()
