"""The gateway's HTTP protocol keeps uvicorn's keep-alive timeout (with one timer per idle
period): a real uvicorn server on loopback, raw connections."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from starlette.types import Receive, Scope, Send

from gateway.serving.protocol import HearthHttpProtocol

KEEP_ALIVE_S = 0.3


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/slow":
        await asyncio.sleep(2 * KEEP_ALIVE_S)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@asynccontextmanager
async def server() -> AsyncIterator[int]:
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, http=HearthHttpProtocol, lifespan="off", log_config=None,
        timeout_keep_alive=KEEP_ALIVE_S,  # type: ignore[arg-type]  # uvicorn takes a float too
    )  # fmt: skip
    srv = uvicorn.Server(config)
    task = asyncio.create_task(srv.serve())
    while not srv.started:
        await asyncio.sleep(0.01)
    port = srv.servers[0].sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        srv.should_exit = True
        await task


async def get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str = "/") -> bytes:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    return head.split(b"\r\n", 1)[0] + b" " + await reader.readexactly(2)


async def closed_after(reader: asyncio.StreamReader) -> float:
    """Seconds until the server closes the connection."""
    t0 = time.perf_counter()
    async with asyncio.timeout(5):
        assert await reader.read() == b""
    return time.perf_counter() - t0


async def test_a_connection_in_use_stays_open_past_the_timeout() -> None:
    async with server() as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        t0 = time.perf_counter()
        for _ in range(6):  # 0.9 s in all, never idle for the timeout
            assert await get(reader, writer) == b"HTTP/1.1 200 OK ok"
            await asyncio.sleep(KEEP_ALIVE_S / 2)
        assert time.perf_counter() - t0 > 2 * KEEP_ALIVE_S
        waited = await closed_after(reader)
        assert KEEP_ALIVE_S / 2 - 0.05 < waited < KEEP_ALIVE_S + 0.25  # idle since the last answer
        writer.close()


async def test_an_idle_connection_is_closed_after_the_timeout() -> None:
    async with server() as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await get(reader, writer) == b"HTTP/1.1 200 OK ok"
        assert KEEP_ALIVE_S - 0.05 < await closed_after(reader) < KEEP_ALIVE_S + 0.25
        writer.close()


async def test_a_request_longer_than_the_timeout_is_not_cut_off() -> None:
    async with server() as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await get(reader, writer) == b"HTTP/1.1 200 OK ok"  # arms the timer
        assert await get(reader, writer, "/slow") == b"HTTP/1.1 200 OK ok"  # busy when it fires
        assert KEEP_ALIVE_S - 0.05 < await closed_after(reader) < KEEP_ALIVE_S + 0.25
        writer.close()
