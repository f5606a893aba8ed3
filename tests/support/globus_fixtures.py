"""pytest fixtures for the Globus Auth + Groups stand-in (tests/support/globus_auth.py).

Register once in tests/conftest.py:
    pytest_plugins = ["tests.support.slurm_fixtures", "tests.support.globus_fixtures"]
(or run pytest with `-p tests.support.globus_fixtures`).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.globus_auth import GlobusAuthStandIn


@pytest.fixture
def globus_auth() -> Iterator[GlobusAuthStandIn]:
    """A started stand-in with an empty world, for one test (starting one takes ~30 ms)."""
    with GlobusAuthStandIn() as stand_in:
        yield stand_in


@pytest.fixture(scope="session")
def globus_auth_shared() -> Iterator[GlobusAuthStandIn]:
    """One stand-in for the session, e.g. behind a session-scoped gateway.

    Tests share its world: add what they need with fresh ids, and leave `failure`, `delay_s`
    and `browser_user` as they found them.
    """
    with GlobusAuthStandIn() as stand_in:
        yield stand_in
