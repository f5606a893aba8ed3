"""Fixtures the gateway's unit tests share (tests/gateway/relay/ has stricter variants)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.relay.direct import DirectRelay
from tests.gateway.recording import RecordingUpstream


@pytest.fixture
async def up() -> AsyncIterator[RecordingUpstream]:
    async with RecordingUpstream() as server:
        yield server


@pytest.fixture
async def relay() -> AsyncIterator[DirectRelay]:
    r = DirectRelay(connect_timeout_s=1.0, request_timeout_s=5.0, stream_idle_timeout_s=5.0)
    yield r
    await r.close()
