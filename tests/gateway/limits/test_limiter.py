"""The limiter against both stores: the machine's Redis and the in-process one."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.auth.principal import Principal
from gateway.config import LimitsSettings
from gateway.errors import QuotaExceeded, RateLimited, ServiceUnavailable
from gateway.limits.buckets import estimate_tokens
from gateway.limits.limiter import Limiter
from gateway.metrics import GatewayMetrics

ALICE = Principal(user="alice", groups=frozenset({"lab"}))
BOB = Principal(user="bob", groups=frozenset({"lab"}))


@pytest.fixture(params=["local", "redis"])
async def make(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """Build limiters on one store; each test gets its own key prefix on the shared Redis."""
    client = aioredis.Redis.from_url("redis://127.0.0.1:6379/0") if request.param == "redis" else None
    prefix = f"test:limit:{secrets.token_hex(4)}:"
    metrics = GatewayMetrics()

    def build(**limits: Any) -> Limiter:
        return Limiter(LimitsSettings(**limits), client, metrics, lease_ttl_s=60, prefix=prefix)

    build.metrics = metrics  # type: ignore[attr-defined]
    yield build
    if client is not None:
        keys = [k async for k in client.scan_iter(f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def test_requests_per_minute_exact_under_concurrency(make: Any) -> None:
    limiter = make(user={"requests_per_minute": 7})

    async def one() -> bool:
        try:
            await limiter.reserve(ALICE, "m", 1)
        except RateLimited:
            return True
        return False

    refused = await asyncio.gather(*(one() for _ in range(30)))
    assert refused.count(False) == 7
    with pytest.raises(RateLimited) as info:
        await limiter.reserve(ALICE, "m", 1)
    headers = info.value.headers
    assert int(headers["retry-after"]) >= 1
    assert headers["x-ratelimit-limit-requests"] == "7"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert "requests per minute (user:alice)" in info.value.message
    await limiter.reserve(BOB, "m", 1)  # another user's counter


async def test_tokens_reserved_then_settled(make: Any) -> None:
    limiter = make(user={"tokens_per_minute": 1000})
    first = await limiter.reserve(ALICE, "m", 600)
    assert first.headers()["x-ratelimit-remaining-tokens"] == "400"
    with pytest.raises(RateLimited):
        await limiter.reserve(ALICE, "m", 600)  # the estimate holds the room
    limiter.settle(first, 100)  # it used far less
    await limiter.drain()
    second = await limiter.reserve(ALICE, "m", 600)
    assert second.headers()["x-ratelimit-remaining-tokens"] == "300"  # 100 real + 600 reserved


async def test_settle_is_idempotent(make: Any) -> None:
    limiter = make(user={"concurrent_requests": 1, "tokens_per_minute": 100})
    r = await limiter.reserve(ALICE, "m", 50)
    limiter.settle(r, 10)
    limiter.settle(r, 10)
    limiter.settle(None, 10)
    await limiter.drain()
    again = await limiter.reserve(ALICE, "m", 50)
    assert again.headers()["x-ratelimit-remaining-tokens"] == "40"


async def test_concurrency_leases(make: Any) -> None:
    limiter = make(user={"concurrent_requests": 2})
    a = await limiter.reserve(ALICE, "m", 1)
    await limiter.reserve(ALICE, "m", 1)
    with pytest.raises(RateLimited) as info:
        await limiter.reserve(ALICE, "m", 1)
    assert info.value.headers["retry-after"] == "1"
    limiter.settle(a, 1)
    await limiter.drain()
    await limiter.reserve(ALICE, "m", 1)


async def test_daily_budget_is_a_quota(make: Any) -> None:
    limiter = make(user={"daily_tokens": 100})
    await limiter.reserve(ALICE, "m", 80)
    with pytest.raises(QuotaExceeded) as info:
        await limiter.reserve(ALICE, "m", 30)
    assert info.value.status == 429
    assert info.value.type == "insufficient_quota"
    assert int(info.value.headers["retry-after"]) > 0


async def test_groups_share_and_models_limit_everyone(make: Any) -> None:
    limiter = make(groups={"lab": {"requests_per_minute": 3}}, models={"big": {"requests_per_minute": 4}})
    await limiter.reserve(ALICE, "small", 1)
    await limiter.reserve(BOB, "small", 1)
    await limiter.reserve(ALICE, "small", 1)
    with pytest.raises(RateLimited, match="group:lab"):
        await limiter.reserve(BOB, "small", 1)
    outsiders = [Principal(user=f"u{i}") for i in range(5)]
    for p in outsiders[:4]:
        await limiter.reserve(p, "big", 1)
    with pytest.raises(RateLimited, match="model:big"):
        await limiter.reserve(outsiders[4], "big", 1)


async def test_per_user_override_and_exempt_admins(make: Any) -> None:
    limiter = make(
        user={"requests_per_minute": 1}, users={"alice": {"requests_per_minute": 3}}, exempt_admins=True
    )
    for _ in range(3):
        await limiter.reserve(ALICE, "m", 1)
    admin = Principal(user="root", is_admin=True)
    for _ in range(5):
        assert await limiter.reserve(admin, "m", 1) is None


async def test_nothing_configured_costs_nothing(make: Any) -> None:
    limiter = make()
    assert not limiter.enabled
    assert await limiter.reserve(ALICE, "m", 10**9) is None


async def test_a_request_over_the_limit_by_itself_says_so(make: Any) -> None:
    limiter = make(user={"tokens_per_minute": 100})
    with pytest.raises(RateLimited, match="max_tokens"):
        await limiter.reserve(ALICE, "m", 500)


@pytest.mark.parametrize("mode", ["open", "closed"])
async def test_unreachable_redis_degrades_as_configured(mode: str) -> None:
    dead = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    metrics = GatewayMetrics()
    limiter = Limiter(
        LimitsSettings(user={"requests_per_minute": 1}, redis_failure=mode),  # type: ignore[arg-type]
        dead,
        metrics,
        lease_ttl_s=60,
    )
    try:
        for _ in range(3):
            if mode == "open":
                assert await limiter.reserve(ALICE, "m", 1) is None
            else:
                with pytest.raises(ServiceUnavailable):
                    await limiter.reserve(ALICE, "m", 1)
        assert metrics.limiter_degraded._value.get() == 1
    finally:
        await dead.aclose()


def test_estimate() -> None:
    assert estimate_tokens({"max_tokens": 100}, 400, "chat.completions", 1024) == 200
    assert estimate_tokens({}, 400, "completions", 1024) == 1124
    assert estimate_tokens({"max_completion_tokens": 10, "n": 3}, 40, "chat.completions", 1) == 40
    assert estimate_tokens({"max_tokens": 100}, 400, "embeddings", 1024) == 100
