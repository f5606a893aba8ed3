"""pytest fixtures for real Slurm clusters (tests/support/slurm.py).

Register once in tests/conftest.py:  pytest_plugins = ["tests.support.slurm_fixtures"]
(or run pytest with `-p tests.support.slurm_fixtures`).

Like PostgreSQL, Slurm is part of the test machine (scripts/setup.sh --dev): when it is
missing the tests that need it fail with the reason, they do not skip.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.slurm import SlurmCluster, SlurmClusterError


def _start(cluster: SlurmCluster) -> SlurmCluster:
    try:
        return cluster.__enter__()
    except SlurmClusterError as exc:
        pytest.fail(f"cannot start the test Slurm cluster {cluster.name}: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """One single-node Slurm cluster ("hearth-a") for the session; pass `.env` to Slurm commands."""
    cluster = _start(SlurmCluster(tmp_path_factory.mktemp("slurm-a"), name="hearth-a"))
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def slurm_clusters(
    slurm_cluster: SlurmCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[SlurmCluster, SlurmCluster]]:
    """Two clusters side by side, for federation: the session's `slurm_cluster` and "hearth-b"."""
    second = _start(SlurmCluster(tmp_path_factory.mktemp("slurm-b"), name="hearth-b"))
    yield slurm_cluster, second
    second.stop()
