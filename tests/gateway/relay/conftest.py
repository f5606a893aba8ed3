"""Relay fixtures: a DirectRelay with short timeouts (the recording upstream `up` comes from
tests/gateway/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.relay.direct import DirectRelay

# Short enough that timeout tests are quick, long enough for a loaded CI machine.
IDLE_TIMEOUT_S = 0.3
REQUEST_TIMEOUT_S = 0.3


@pytest.fixture
async def relay() -> AsyncIterator[DirectRelay]:
    r = DirectRelay(
        connect_timeout_s=1.0,
        request_timeout_s=REQUEST_TIMEOUT_S,
        stream_idle_timeout_s=IDLE_TIMEOUT_S,
    )
    yield r
    await r.close()
