"""Relay fixtures: a recording upstream on loopback and a DirectRelay with short timeouts."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.relay.direct import DirectRelay
from tests.gateway.recording import RecordingUpstream

# Short enough that timeout tests are quick, long enough for a loaded CI machine.
IDLE_TIMEOUT_S = 0.3
REQUEST_TIMEOUT_S = 0.3


@pytest.fixture
async def up() -> AsyncIterator[RecordingUpstream]:
    async with RecordingUpstream() as server:
        yield server


@pytest.fixture
async def relay() -> AsyncIterator[DirectRelay]:
    r = DirectRelay(
        connect_timeout_s=1.0,
        request_timeout_s=REQUEST_TIMEOUT_S,
        stream_idle_timeout_s=IDLE_TIMEOUT_S,
    )
    yield r
    await r.close()
