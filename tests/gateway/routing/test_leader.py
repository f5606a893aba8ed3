"""The leader lease against the machine's Redis: one leader per key, take-over, renewal."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from gateway.routing.leader import LeaderLease, new_holder_id

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
async def key() -> AsyncIterator[str]:
    name = f"hearth-test:{secrets.token_hex(6)}:leader"
    yield name
    client = aioredis.Redis.from_url(REDIS_URL)
    await client.delete(name)
    await client.aclose()


@pytest.fixture
async def clients() -> AsyncIterator[tuple[aioredis.Redis, aioredis.Redis]]:
    """Two connections, as two replicas would have."""
    a, b = aioredis.Redis.from_url(REDIS_URL), aioredis.Redis.from_url(REDIS_URL)
    yield a, b
    await a.aclose()
    await b.aclose()


async def wait_gone(client: aioredis.Redis, key: str) -> None:
    for _ in range(500):
        if not await client.exists(key):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{key} never expired")


async def test_one_of_two_leads(clients: tuple[aioredis.Redis, aioredis.Redis], key: str) -> None:
    a = LeaderLease(clients[0], key, ttl_s=60)
    b = LeaderLease(clients[1], key, ttl_s=60)
    results = await asyncio.gather(a.hold(), b.hold())
    assert sorted(results) == [False, True]
    assert [a.is_leader, b.is_leader] == results
    leader = a if a.is_leader else b
    assert await clients[0].get(key) == leader.holder.encode()
    # Holding again changes nothing.
    assert await asyncio.gather(a.hold(), b.hold()) == results


async def test_release_hands_over(clients: tuple[aioredis.Redis, aioredis.Redis], key: str) -> None:
    a = LeaderLease(clients[0], key, ttl_s=60)
    b = LeaderLease(clients[1], key, ttl_s=60)
    assert await a.hold()
    assert not await b.hold()
    await b.release()  # not the holder: the lock stays
    assert await clients[0].get(key) == a.holder.encode()
    await a.release()
    assert not a.is_leader
    assert await b.hold()
    assert not await a.hold()


async def test_expired_lease_is_taken_over_and_not_renewed_by_the_old_leader(
    clients: tuple[aioredis.Redis, aioredis.Redis], key: str
) -> None:
    a = LeaderLease(clients[0], key, ttl_s=0.2)
    b = LeaderLease(clients[1], key, ttl_s=60)
    assert await a.hold()
    await wait_gone(clients[0], key)  # a stopped renewing (e.g. it hung)
    assert await b.hold()
    assert not await a.hold()  # a comes back: it may not extend b's lease
    assert await clients[0].get(key) == b.holder.encode()


async def test_renewal_extends_the_lease(clients: tuple[aioredis.Redis, aioredis.Redis], key: str) -> None:
    a = LeaderLease(clients[0], key, ttl_s=60)
    b = LeaderLease(clients[1], key, ttl_s=60)
    assert await a.hold()
    await clients[0].pexpire(key, 1000)  # as if most of the lease had passed
    assert await a.hold()
    assert await clients[0].pttl(key) > 30_000
    assert not await b.hold()
    assert a.is_leader


async def test_someone_elses_lock_is_not_extended(
    clients: tuple[aioredis.Redis, aioredis.Redis], key: str
) -> None:
    await clients[0].set(key, "another-replica", px=60_000)
    a = LeaderLease(clients[0], key, ttl_s=60)
    assert not await a.hold()
    await a.release()
    assert await clients[0].get(key) == b"another-replica"


async def test_without_redis_always_leads() -> None:
    lease = LeaderLease(None, "unused", ttl_s=1)
    assert lease.is_leader
    assert await lease.hold()
    await lease.release()
    assert lease.is_leader


async def test_unreachable_redis_means_not_leading(caplog: pytest.LogCaptureFixture) -> None:
    dead = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    lease = LeaderLease(dead, "hearth-test:leader", ttl_s=5)
    with caplog.at_level(logging.INFO, logger="gateway.routing.leader"):
        assert not await lease.hold()
        assert not await lease.hold()
        await lease.release()
    assert not lease.is_leader
    unreachable = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(unreachable) == 1  # once per change, not per attempt
    await dead.aclose()


def test_holder_ids_are_unique_per_process_and_call() -> None:
    first, second = new_holder_id(), new_holder_id()
    assert first != second
    assert f"-{os.getpid()}-" in first
    assert LeaderLease(None, "k", ttl_s=1).holder != LeaderLease(None, "k", ttl_s=1).holder
