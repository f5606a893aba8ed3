"""RequestContextMiddleware and /ready over real HTTP: the app from create_app(settings), served by
uvicorn on loopback inside the test's event loop."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from gateway.app import create_app
from gateway.config import load_settings
from tests.support.procs import free_port

KEY = "sk-middleware-test"
LIMIT = 1024  # the smallest max_body_bytes the config allows
REDIS_URL = "redis://127.0.0.1:6379/0"


@asynccontextmanager
async def serve(store_dir: Path, **sections: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A gateway with no upstreams on loopback, and a client for it that sends the key."""
    settings = load_settings(
        None,
        server={"max_body_bytes": LIMIT, "access_log": False},
        store={"url": f"sqlite:///{store_dir / 'hearth.db'}"},
        auth={"api_keys": [{"owner": "tester", "key": KEY}]},
        **sections,
    )
    port = free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_config=None, lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()  # raises what stopped it
            raise RuntimeError("uvicorn exited before it started")
        await asyncio.sleep(0.01)
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {KEY}"}, timeout=10
        ) as client:
            yield client
    finally:
        server.should_exit = True
        await task


@pytest.fixture(scope="module")
async def client(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(tmp_path_factory.mktemp("middleware")) as c:
        yield c


def assert_error(resp: httpx.Response, status: int, code: str) -> None:
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["code"] == code
    assert set(resp.json()["error"]) == {"message", "type", "param", "code"}
    assert resp.headers["x-request-id"]


@pytest.mark.parametrize(
    "request_id",
    # Up to 64 characters: the width of the store's request_id column.
    ["abc-123", "0f8fad5b-d9cb-469f-a165-70867728950e", "trace.span:7_X", "x" * 64],
)
async def test_sane_request_id_is_echoed(client: httpx.AsyncClient, request_id: str) -> None:
    headers = {"X-Request-ID": request_id}
    for path in ("/health", "/v1/models", "/nope", "/v1/chat/completions"):
        resp = await client.get(path, headers=headers)
        assert resp.headers["x-request-id"] == request_id
    resp = await client.post("/v1/chat/completions", content=b"{}", headers=headers)  # the fast lane
    assert resp.status_code == 400
    assert resp.headers["x-request-id"] == request_id


@pytest.mark.parametrize(
    "request_id",
    [b"has space", b"x" * 65, b"y" * 200, b"semi;colon", b'quote"d', b"slash/ed", "ünïcode".encode()],
)
async def test_unsafe_request_id_is_replaced(client: httpx.AsyncClient, request_id: bytes) -> None:
    headers = {b"X-Request-ID": request_id}
    resp = await client.get("/health", headers=headers)
    assert re.fullmatch(r"[0-9a-f]{32}", resp.headers["x-request-id"])
    resp = await client.post("/v1/chat/completions", content=b"{}", headers=headers)
    assert re.fullmatch(r"[0-9a-f]{32}", resp.headers["x-request-id"])


async def test_each_request_gets_its_own_id(client: httpx.AsyncClient) -> None:
    ids = {(await client.get("/health")).headers["x-request-id"] for _ in range(5)}
    assert len(ids) == 5
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)


async def test_content_length_over_the_limit(client: httpx.AsyncClient) -> None:
    body = b'{"model": "m", "pad": "' + b"x" * LIMIT + b'"}'
    resp = await client.post("/v1/chat/completions", content=body)
    assert_error(resp, 413, "request_too_large")
    assert str(LIMIT) in resp.json()["error"]["message"]
    # Refused before anything else, authentication included.
    resp = await client.post("/v1/chat/completions", content=body, headers={"Authorization": ""})
    assert_error(resp, 413, "request_too_large")


async def test_chunked_body_over_the_limit(client: httpx.AsyncClient) -> None:
    async def chunks(total: int) -> AsyncIterator[bytes]:
        sent = 0
        while sent < total:
            yield b"x" * min(256, total - sent)
            sent += 256

    resp = await client.post("/v1/chat/completions", content=chunks(4 * LIMIT))
    assert "content-length" not in resp.request.headers  # really chunked
    assert_error(resp, 413, "request_too_large")

    # Under the limit, the same route reads the body and judges it.
    resp = await client.post("/v1/chat/completions", content=chunks(LIMIT // 2))
    assert_error(resp, 400, "invalid_json")


async def test_body_at_the_limit_is_read(client: httpx.AsyncClient) -> None:
    body = b'{"model": "m", "messages": [{"role": "user", "content": "'
    body += b"x" * (LIMIT - len(body) - 4) + b'"}]}'
    assert len(body) == LIMIT
    resp = await client.post("/v1/chat/completions", content=body)
    assert_error(resp, 404, "model_not_found")  # valid, and no such model here


async def test_ready_without_redis(client: httpx.AsyncClient) -> None:
    resp = await client.get("/ready")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ready", "checks": {"store": True}}


async def test_ready_with_redis(tmp_path: Path) -> None:
    async with serve(tmp_path, redis={"url": REDIS_URL}) as client:
        resp = await client.get("/ready")
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"status": "ready", "checks": {"store": True, "redis": True}}


async def test_ready_with_redis_down(tmp_path: Path) -> None:
    async with serve(tmp_path, redis={"url": f"redis://127.0.0.1:{free_port()}/0"}) as client:
        resp = await client.get("/ready")
        assert (await client.get("/health")).status_code == 200  # liveness does not care
    assert resp.status_code == 503
    assert resp.json() == {"status": "not ready", "checks": {"store": True, "redis": False}}
