"""Rate limits across two real gateway processes sharing one Redis (the tests' own, so it can
be restarted mid-run)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.support.gateway import Gateway, Sim, start_gateway, upstream, wait_for
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    """The limiter does not touch the store: one backend is enough here."""
    return f"sqlite:///{tmp_path / 'hearth.db'}"


@pytest.fixture
def redis_server(logs: Path) -> Iterator[RedisServer]:
    server = RedisServer(logs).start()
    yield server
    server.stop()


def _gateways(logs: Path, sim: Sim, store_url: str, redis_url: str, n: int, **limits: Any) -> list[Gateway]:
    return [
        start_gateway(
            logs,
            clusters={"local": {"upstreams": [upstream(sim, "sim")]}},
            store_url=store_url,
            redis={"url": redis_url},
            limits=limits,
        )
        for _ in range(n)
    ]


def _body(sim: Sim, **extra: Any) -> dict[str, Any]:
    return {"model": sim.model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8, **extra}


def _not_near_a_minute_boundary() -> None:
    """Fixed one-minute windows: keep a burst inside one."""
    if time.time() % 60 > 45:
        time.sleep(61 - time.time() % 60)


def test_requests_per_minute_exact_across_two_replicas(
    logs: Path, sim: Sim, store_url: str, redis_server: RedisServer
) -> None:
    limit = 25
    gateways = _gateways(logs, sim, store_url, redis_server.url, 2, user={"requests_per_minute": limit})
    try:
        _not_near_a_minute_boundary()

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=30) as client:
                return await asyncio.gather(*(
                    client.post(f"{gw.url}/chat/completions", json=_body(sim),
                                headers={"Authorization": f"Bearer {gw.api_key}"})
                    for _ in range(limit) for gw in gateways
                ))  # fmt: skip

        replies = asyncio.run(burst())
        ok = [r for r in replies if r.status_code == 200]
        refused = [r for r in replies if r.status_code == 429]
        assert len(ok) == limit
        assert len(refused) == limit
        for r in refused:
            assert r.json()["error"]["code"] == "rate_limit_exceeded"
            assert int(r.headers["retry-after"]) >= 1
            assert r.headers["x-ratelimit-limit-requests"] == str(limit)
            assert r.headers["x-ratelimit-remaining-requests"] == "0"
        remaining = sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in ok)
        assert remaining == list(range(limit))  # each admission saw the shared count
    finally:
        for gw in gateways:
            gw.stop()


def test_tokens_reserved_and_settled_stream_and_not(
    logs: Path, sim: Sim, store_url: str, redis_server: RedisServer
) -> None:
    (gw,) = _gateways(logs, sim, store_url, redis_server.url, 1, user={"tokens_per_minute": 1_000_000})
    try:
        _not_near_a_minute_boundary()
        headers = {"Authorization": f"Bearer {gw.api_key}"}
        plain = httpx.post(f"{gw.url}/chat/completions", json=_body(sim), headers=headers, timeout=30)
        assert plain.status_code == 200
        assert int(plain.headers["x-ratelimit-remaining-tokens"]) < 1_000_000
        used = plain.json()["usage"]["total_tokens"]
        body = _body(sim, stream=True, stream_options={"include_usage": True})
        with httpx.stream("POST", f"{gw.url}/chat/completions", json=body, headers=headers, timeout=30) as r:
            assert r.status_code == 200
            assert "x-ratelimit-remaining-tokens" in r.headers
            events = [line for line in r.iter_lines() if line.startswith("data: {")]
        used += httpx.Response(200, content=events[-1][6:]).json()["usage"]["total_tokens"]

        client = redis.Redis.from_url(redis_server.url)
        window = int(time.time() // 60)
        key = f"hearth:limit:user:tester:tpm:{window}"
        # Reserved estimates are replaced by the real counts once each request has settled.
        assert wait_for(lambda: int(client.get(key) or 0) == used, timeout=5), (client.get(key), used)
        assert client.zcard("hearth:limit:user:tester:conc") == 0
    finally:
        gw.stop()


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_redis_restarted_mid_run(
    logs: Path, sim: Sim, store_url: str, redis_server: RedisServer, mode: str
) -> None:
    (gw,) = _gateways(
        logs, sim, store_url, redis_server.url, 1, user={"requests_per_minute": 1000}, redis_failure=mode
    )
    headers = {"Authorization": f"Bearer {gw.api_key}"}

    def status() -> int:
        return httpx.post(
            f"{gw.url}/chat/completions", json=_body(sim), headers=headers, timeout=30
        ).status_code

    def degraded() -> float:
        text = httpx.get(f"{gw.url.removesuffix('/v1')}/metrics").text
        line = next(x for x in text.splitlines() if x.startswith("hearth_limiter_degraded "))
        return float(line.split()[1])

    try:
        assert status() == 200
        redis_server.stop()
        during = [status() for _ in range(5)]
        assert during == ([200] * 5 if mode == "open" else [503] * 5)
        assert degraded() == 1.0
        assert gw.proc.proc is not None
        assert gw.proc.proc.poll() is None
        redis_server.start()
        assert wait_for(lambda: status() == 200, timeout=10)
        assert degraded() == 0.0
    finally:
        gw.stop()
