"""The relay's HTTP/1.1 client against real sockets: raw asyncio servers that send exact bytes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from gateway.relay.http1 import (
    ConnectError,
    ConnectionLost,
    ConnectionPool,
    DeadlineExceeded,
    Origin,
    ReadTimeout,
)
from tests.support.procs import free_port

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """Counts connections and requests; each connection is served by `handler`."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.open = 0
        self.max_open = 0
        self.closed_by_peer = asyncio.Event()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open -= 1
            writer.close()


@asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[tuple[RawServer, Origin]]:
    state = RawServer(handler)
    port = free_port()
    server = await asyncio.start_server(state.serve, "127.0.0.1", port)
    try:
        yield state, Origin("http", "127.0.0.1", port)
    finally:
        server.close()
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, dict[bytes, bytes], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {}
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(b":")
            headers[k.strip().lower()] = v.strip()
    body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
    return lines[0], headers, body


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def echo_forever(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        line, _headers, body = await read_request(reader)
        writer.write(ok(line + b"|" + body, b"Content-Type: text/plain\r\n"))
        await writer.drain()


async def test_request_head_body_and_keep_alive_reuse() -> None:
    async with raw_server(echo_forever) as (server, origin):
        pool = ConnectionPool()
        for i in range(3):
            resp = await pool.request("POST", origin, "/v1/x", {"X-Request-ID": f"r{i}"}, b'{"a":1}')
            assert resp.status == 200
            assert resp.content_type == "text/plain"
            assert await resp.read() == b'POST /v1/x HTTP/1.1|{"a":1}'
            resp.release()
        assert server.connections == 1  # one keep-alive connection for all three
        await pool.close()


async def test_chunked_and_close_delimited_bodies() -> None:
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")
        await writer.drain()
        writer.close()

    async with raw_server(chunked) as (server, origin):
        pool = ConnectionPool()
        resp = await pool.request("GET", origin, "/", {})
        assert await resp.read() == b"hello world"
        resp.release()
        resp = await pool.request("GET", origin, "/", {})
        assert await resp.read() == b"until the end"
        resp.release()
        assert server.connections == 1
        await pool.close()


async def test_connection_close_is_not_reused() -> None:
    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(ok(b"x", b"Connection: close\r\n"))
        await writer.drain()

    async with raw_server(once) as (server, origin):
        pool = ConnectionPool()
        for _ in range(2):
            resp = await pool.request("GET", origin, "/", {})
            assert await resp.read() == b"x"
            resp.release()
        assert server.connections == 2
        await pool.close()


async def test_idle_connection_closed_by_server_is_retried_once() -> None:
    """The server drops keep-alive connections silently (like uvicorn's keep-alive timeout)."""
    seen = []

    async def drop_after_each(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _line, _, body = await read_request(reader)
        seen.append(body)
        writer.write(ok(b"done"))
        await writer.drain()
        # Close without saying so; the client only finds out when it reuses the connection.
        writer.transport.abort()

    async with raw_server(drop_after_each) as (_server, origin):
        pool = ConnectionPool()
        for i in range(3):
            resp = await pool.request("POST", origin, "/", {}, b"%d" % i)
            assert await resp.read() == b"done"
            resp.release()
            await asyncio.sleep(0)  # the close may or may not have been noticed yet
        assert seen == [b"0", b"1", b"2"]  # each request reached the server exactly once
        await pool.close()


async def test_truncated_body_and_garbage_are_connection_lost() -> None:
    async def truncated(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
        await writer.drain()

    async with raw_server(truncated) as (_, origin):
        pool = ConnectionPool()
        resp = await pool.request("GET", origin, "/", {})
        with pytest.raises(ConnectionLost):
            await resp.read()
        resp.release()
        await pool.close()

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)

    async with raw_server(garbage) as (_, origin):
        pool = ConnectionPool()
        with pytest.raises(ConnectionLost, match="not valid HTTP"):
            await pool.request("GET", origin, "/", {})
        await pool.close()


async def test_read_timeout_and_connect_error() -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        writer.write(b"6\r\ndata:\n\r\n")
        await writer.drain()
        await asyncio.sleep(5)

    async with raw_server(stall) as (_, origin):
        pool = ConnectionPool()
        resp = await pool.request("POST", origin, "/", {}, b"{}", read_timeout=0.2)
        assert await resp.readline() == b"data:\n"
        with pytest.raises(ReadTimeout):
            await resp.readline()
        resp.close()
        await pool.close()

    pool = ConnectionPool(connect_timeout=2)
    with pytest.raises(ConnectError, match="cannot connect"):
        await pool.request("GET", Origin("http", "127.0.0.1", free_port()), "/", {})


async def fetch(pool: ConnectionPool, origin: Origin, target: str, *, deadline: float) -> bytes:
    resp = await pool.request("POST", origin, target, {}, b"{}", deadline=deadline)
    try:
        return await resp.read()
    finally:
        resp.release()


async def test_deadline_covers_headers_and_body() -> None:
    """A request's deadline fails it whether the headers or the body are late, and the
    connection is closed (the server sees the client leave)."""
    seen_close = asyncio.Event()

    async def late(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line, _, _ = await read_request(reader)
        if line.startswith(b"POST /body"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
            await writer.drain()
        if not await reader.read(1):
            seen_close.set()

    async with raw_server(late) as (_, origin):
        pool = ConnectionPool()
        loop = asyncio.get_running_loop()
        for target in ("/headers", "/body"):
            seen_close.clear()
            start = loop.time()
            with pytest.raises(DeadlineExceeded):
                await fetch(pool, origin, target, deadline=start + 0.2)
            assert 0.19 <= loop.time() - start < 1.0
            await asyncio.wait_for(seen_close.wait(), 2)
        assert not pool._deadlines
        await pool.close()


async def test_deadline_does_not_outlive_its_request() -> None:
    """A connection reused after a request with a near deadline is not failed by it later."""

    async def slow_second(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for i in range(2):
            await read_request(reader)
            if i:
                await asyncio.sleep(0.4)
            writer.write(ok(b"done"))
            await writer.drain()

    async with raw_server(slow_second) as (server, origin):
        pool = ConnectionPool()
        loop = asyncio.get_running_loop()
        resp = await pool.request("POST", origin, "/", {}, b"{}", deadline=loop.time() + 0.1)
        assert await resp.read() == b"done"
        resp.release()
        resp = await pool.request("POST", origin, "/", {}, b"{}")
        assert await resp.read() == b"done"
        resp.release()
        assert server.connections == 1
        await pool.close()


async def test_waiting_for_a_free_connection_counts_against_the_deadline() -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    async with raw_server(stall) as (_, origin):
        pool = ConnectionPool(max_connections=1)
        loop = asyncio.get_running_loop()
        first = asyncio.create_task(pool.request("POST", origin, "/", {}, b"{}"))
        await asyncio.sleep(0.05)
        with pytest.raises(DeadlineExceeded, match="no connection became free"):
            await pool.request("POST", origin, "/", {}, b"{}", deadline=loop.time() + 0.2)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        await pool.close()


async def test_connection_slots_go_in_arrival_order_and_none_is_lost() -> None:
    pool = ConnectionPool(max_connections=1)
    got: list[str] = []

    async def take(name: str) -> None:
        await pool._acquire(None)
        got.append(name)

    await pool._acquire(None)  # a free slot is taken at once
    a, b, c = (asyncio.create_task(take(n)) for n in "abc")
    await asyncio.sleep(0)
    b.cancel()  # gave up waiting: no longer in the queue
    await asyncio.sleep(0)
    assert len(pool._waiters) == 2
    pool._release_slot()
    await a
    pool._release_slot()
    await c
    assert got == ["a", "c"]
    assert pool._in_use == 1
    assert not pool._waiters

    d = asyncio.create_task(take("d"))
    await asyncio.sleep(0)
    pool._release_slot()  # the slot is handed to d ...
    d.cancel()  # ... which is cancelled before it runs: it passes the slot on
    with pytest.raises(asyncio.CancelledError):
        await d
    assert pool._in_use == 0
    assert not pool._waiters
    await pool._acquire(None)
    assert pool._in_use == 1


async def test_readline_splits_lines_across_packets() -> None:
    async def dribble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        body = b"data: one\r\n\r\ndata: two\n\nlast"
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
        for i in range(0, len(body), 3):
            writer.write(body[i : i + 3])
            await writer.drain()
            await asyncio.sleep(0.001)

    async with raw_server(dribble) as (_, origin):
        pool = ConnectionPool()
        resp = await pool.request("GET", origin, "/", {})
        lines = []
        while line := await resp.readline():
            lines.append(line)
        assert lines == [b"data: one\r\n", b"\r\n", b"data: two\n", b"\n", b"last"]
        resp.release()
        await pool.close()


async def test_large_body_with_back_pressure() -> None:
    payload = bytes(range(256)) * 20_000  # 5 MB

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(ok(payload))
        await writer.drain()

    async with raw_server(big) as (_, origin):
        pool = ConnectionPool()
        resp = await pool.request("GET", origin, "/", {})
        assert await resp.read() == payload
        resp.release()
        await pool.close()


async def test_cancel_mid_response_closes_the_connection() -> None:
    closed = asyncio.Event()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        await writer.drain()
        try:
            while True:
                writer.write(b"2\r\nx\n\r\n")
                await writer.drain()
                await asyncio.sleep(0.01)
        except ConnectionError:
            closed.set()

    async with raw_server(slow) as (_, origin):
        pool = ConnectionPool()
        resp = await pool.request("GET", origin, "/", {})

        async def consume() -> None:
            while await resp.readline():
                pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        resp.release()  # not read to its end: closes instead of pooling
        await asyncio.wait_for(closed.wait(), 5)  # the server saw the client leave
        await pool.close()


async def test_max_connections_bounds_concurrency() -> None:
    async def slowish(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            await asyncio.sleep(0.02)
            writer.write(ok(b"ok"))
            await writer.drain()

    async with raw_server(slowish) as (server, origin):
        pool = ConnectionPool(max_connections=2)

        async def one() -> bytes:
            resp = await pool.request("GET", origin, "/", {})
            try:
                return await resp.read()
            finally:
                resp.release()

        assert await asyncio.gather(*(one() for _ in range(8))) == [b"ok"] * 8
        assert server.max_open <= 2
        await pool.close()


def test_header_injection_is_refused() -> None:
    pool = ConnectionPool()
    with pytest.raises(ValueError, match="line break"):
        asyncio.run(pool.request("GET", Origin("http", "127.0.0.1", 1), "/", {"X-Evil": "a\r\nHost: b"}))


def test_origin_parsing() -> None:
    assert Origin.of("http://gpu01:8000/v1/") == (Origin("http", "gpu01", 8000), "/v1")
    assert Origin.of("https://proxy.example.org/site/v1") == (
        Origin("https", "proxy.example.org", 443),
        "/site/v1",
    )
    assert Origin("https", "h", 443).host_header == "h"
    assert Origin("http", "::1", 8000).host_header == "[::1]:8000"
    with pytest.raises(ValueError, match="not an http"):
        Origin.of("ftp://x/v1")
