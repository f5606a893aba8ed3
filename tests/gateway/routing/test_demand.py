"""Demand: one replica's count, the board that sums replicas (real Redis), the moving average."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from gateway.routing.demand import DemandAverage, DemandBoard, GatewayDemand

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
async def redis_client() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(REDIS_URL)
    yield client
    await client.aclose()


@pytest.fixture
async def prefix(redis_client: aioredis.Redis) -> AsyncIterator[str]:
    name = f"hearth-test:{secrets.token_hex(6)}:demand"
    yield name
    keys = [k async for k in redis_client.scan_iter(match=f"{name}:*")]
    if keys:
        await redis_client.delete(*keys)


def test_gateway_demand_sums_in_flight_per_model() -> None:
    in_flight = {("a", "c1/w1"): 2, ("a", "c2/w7"): 1, ("b", "c1/w2"): 0, ("d", "c1/w3"): 1}
    assert GatewayDemand(lambda: in_flight).current() == {"a": 3.0, "d": 1.0}


async def test_board_sums_replicas(redis_client: aioredis.Redis, prefix: str) -> None:
    one = DemandBoard(redis_client, "replica-1", ttl_s=60, prefix=prefix)
    two = DemandBoard(redis_client, "replica-2", ttl_s=60, prefix=prefix)
    await one.publish({"a": 2, "b": 1.5})
    await two.publish({"a": 3, "c": 0})
    assert await one.total() == {"a": 5.0, "b": 1.5}
    assert await two.total() == await one.total()
    # A new publish replaces the replica's old numbers.
    await one.publish({"b": 4})
    assert await two.total() == {"a": 3.0, "b": 4.0}
    await two.publish({})
    assert await one.total() == {"b": 4.0}


async def test_expired_replica_drops_out(redis_client: aioredis.Redis, prefix: str) -> None:
    live = DemandBoard(redis_client, "live", ttl_s=60, prefix=prefix)
    dying = DemandBoard(redis_client, "dying", ttl_s=0.2, prefix=prefix)
    await live.publish({"a": 1})
    await dying.publish({"a": 5, "b": 2})
    assert await redis_client.smembers(f"{prefix}:replicas") == {b"live", b"dying"}
    for _ in range(500):  # the replica stops publishing; its hash expires
        if not await redis_client.exists(f"{prefix}:replica:dying"):
            break
        await asyncio.sleep(0.02)
    assert await live.total() == {"a": 1.0}
    assert await redis_client.smembers(f"{prefix}:replicas") == {b"live"}


async def test_without_redis_the_total_is_the_local_demand() -> None:
    board = DemandBoard(None, "alone", ttl_s=30)
    assert await board.total() == {}
    await board.publish({"a": 2, "b": 0})
    assert await board.total() == {"a": 2.0}


async def test_unreachable_redis() -> None:
    dead = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    board = DemandBoard(dead, "r", ttl_s=30, prefix="hearth-test:unreachable")
    await board.publish({"a": 1})  # logged, not raised
    with pytest.raises((aioredis.RedisError, OSError)):
        await board.total()
    await dead.aclose()


def test_average_first_sample_then_half_life() -> None:
    avg = DemandAverage(halflife_s=60)
    assert avg.update({"a": 8}, now=1000) == {"a": 8.0}
    assert avg.update({}, now=1060) == {"a": pytest.approx(4.0)}  # one half-life toward 0
    assert avg.update({"a": 4, "b": 8}, now=1120) == {"a": pytest.approx(4.0), "b": pytest.approx(4.0)}


def test_average_uses_the_time_that_passed() -> None:
    steps, once = DemandAverage(halflife_s=60), DemandAverage(halflife_s=60)
    steps.update({"a": 10}, now=0)
    once.update({"a": 10}, now=0)
    steps.update({"a": 2}, now=10)
    steps.update({"a": 2}, now=60)
    once.update({"a": 2}, now=60)
    assert steps.values["a"] == pytest.approx(once.values["a"])
    assert once.values["a"] == pytest.approx(6.0)


def test_negligible_average_is_no_demand() -> None:
    avg = DemandAverage(halflife_s=1)
    avg.update({"a": 1}, now=0)
    assert avg.update({}, now=10) == {}  # 1/1024 of a request
    avg.update({"a": 3}, now=11)
    avg.reset()
    assert avg.values == {}
    assert avg.update({"a": 2}, now=12) == {"a": 2.0}
