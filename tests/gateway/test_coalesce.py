"""CoalescingTransport: what is written in one loop turn leaves as one write, on a real socket."""

from __future__ import annotations

import asyncio
import socket

from gateway.coalesce import CoalescingTransport
from tests.support.gateway import Gateway


class Recorder(asyncio.Protocol):
    """The server side of a real loopback connection, recording each write the client makes."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.closed = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        self.received += data

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()


class CountingTransport:
    """Counts write() calls on the real transport underneath."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self.transport.write(data)

    def writelines(self, chunks: list[bytes]) -> None:
        self.writes.append(b"".join(chunks))
        self.transport.writelines(chunks)

    def __getattr__(self, name: str) -> object:
        return getattr(self.transport, name)


async def connected() -> tuple[CoalescingTransport, CountingTransport, Recorder, asyncio.Server]:
    loop = asyncio.get_running_loop()
    recorder = Recorder()
    server = await loop.create_server(lambda: recorder, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port, family=socket.AF_INET)
    counting = CountingTransport(transport)
    return CoalescingTransport(counting), counting, recorder, server  # type: ignore[arg-type]


async def until(predicate: object, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.01)


async def test_a_held_head_leaves_with_the_body_in_one_write() -> None:
    t, counting, recorder, server = await connected()
    t.hold_next()
    t.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    assert counting.writes == []  # held for the body
    assert t.get_write_buffer_size() >= 30
    t.write(memoryview(b"ok"))
    assert counting.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]
    t.write(b"next")  # nothing held any more: straight through
    assert counting.writes[-1] == b"next"
    await until(lambda: bytes(recorder.received).endswith(b"oknext"))
    t.close()
    server.close()


async def test_an_empty_body_still_sends_the_head_and_close_flushes() -> None:
    t, counting, recorder, server = await connected()
    t.hold_next()
    t.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
    t.write(b"")
    assert counting.writes == [b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n"]
    t.hold_next()
    t.writelines([b"held", b"-then-sent"])
    assert counting.writes[-1] == b"held-then-sent"
    t.hold_next()
    t.write(b"last words")
    t.close()  # a head held when the app gives up still goes out before the close
    assert counting.writes[-1] == b"last words"
    await until(recorder.closed.is_set)
    assert bytes(recorder.received).endswith(b"held-then-sentlast words")
    assert t.is_closing()  # delegated to the real transport
    server.close()


async def test_through_a_real_gateway_process_the_answer_is_one_segment(gateway: Gateway) -> None:
    """End to end: `hearth serve` answers a JSON request with head and body in one read."""
    host, port = gateway.root.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
    await writer.drain()
    first = await asyncio.wait_for(reader.read(65536), 5)
    head, _, body = first.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    length = int(
        next(v for k, v in (h.split(b": ", 1) for h in head.split(b"\r\n")[1:]) if k == b"content-length")
    )
    assert len(body) == length  # the body arrived with the head
    writer.write(b"HEAD /health HTTP/1.1\r\nhost: x\r\n\r\n")  # no body follows: not held
    await writer.drain()
    assert (await asyncio.wait_for(reader.read(65536), 5)).startswith(b"HTTP/1.1 ")
    writer.close()
