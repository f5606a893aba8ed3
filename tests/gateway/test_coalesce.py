"""CoalescingTransport: what is written in one loop turn leaves as one write, on a real socket."""

from __future__ import annotations

import asyncio
import socket

from gateway.coalesce import CoalescingTransport


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
    return CoalescingTransport(counting, loop), counting, recorder, server  # type: ignore[arg-type]


async def until(predicate: object, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.01)


async def test_writes_in_one_turn_leave_as_one() -> None:
    t, counting, recorder, server = await connected()
    t.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    t.write(b"")  # nothing to send: ignored
    t.write(memoryview(b"ok"))
    assert counting.writes == []  # held until the end of the turn
    await asyncio.sleep(0)
    assert counting.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]
    await until(lambda: bytes(recorder.received).endswith(b"ok"))
    t.close()
    server.close()


async def test_writes_in_separate_turns_leave_separately_and_close_flushes() -> None:
    t, counting, recorder, server = await connected()
    t.write(b"data: 1\n\n")
    await asyncio.sleep(0)
    t.writelines([b"data: 2\n\n", b"data: [DONE]\n\n"])
    assert t.get_write_buffer_size() >= len(b"data: 2\n\ndata: [DONE]\n\n")
    t.close()  # flushes what is pending first
    assert counting.writes == [b"data: 1\n\n", b"data: 2\n\ndata: [DONE]\n\n"]
    await until(recorder.closed.is_set)
    assert bytes(recorder.received) == b"data: 1\n\ndata: 2\n\ndata: [DONE]\n\n"
    assert t.is_closing()  # delegated to the real transport
    server.close()


async def test_large_pending_writes_go_as_a_list_and_nothing_after_abort() -> None:
    t, counting, recorder, server = await connected()
    big = b"x" * 70_000
    t.write(b"head")
    t.write(big)
    await asyncio.sleep(0)
    assert counting.writes == [b"head" + big]  # one writelines call
    await until(lambda: len(recorder.received) == 4 + len(big))
    t.write(b"lost")
    t.abort()
    await asyncio.sleep(0)  # the scheduled flush finds the transport closing and drops it
    assert len(counting.writes) == 1
    server.close()
