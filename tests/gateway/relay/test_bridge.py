"""The stream bridges through their shared interface: the in-process one, and the Redis Streams
one on the machine's Redis (each test under its own key prefix, deleted afterwards). For Redis
the writer and the reader are two bridges with their own connections, as two replicas are."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from gateway.app import create_app
from gateway.config import load_settings
from gateway.relay.bridge import (
    BridgeError,
    BridgeUnavailable,
    LocalStreamBridge,
    StreamBridge,
    StreamClosed,
    StreamStalled,
    StreamWriter,
    UnknownStream,
)
from gateway.relay.bridge_redis import RedisStreamBridge
from tests.support.procs import free_port

REDIS_URL = "redis://127.0.0.1:6379/0"

EVENTS = [
    b'data: {"choices":[{"delta":{"content":"Hel"}}]}\n\n',
    b": keep-alive\n\n",
    b"event: note\ndata: two\ndata: lines\n\n",
    b'data: {"choices":[{"delta":{"content":"lo"}}]}\n\n',
    b"data: [DONE]\n\n",
]
BODY = b"".join(EVENTS)

# (reader's bridge, writer's bridge): one bridge in-process; two replicas' bridges over Redis.
Pair = tuple[StreamBridge, StreamBridge]
MakePair = Callable[..., Pair]


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    prefix = f"hearth-test:{uuid.uuid4().hex}:"
    yield prefix
    client = aioredis.Redis.from_url(REDIS_URL)
    keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture(params=["local", "redis"])
async def make_pair(request: pytest.FixtureRequest, redis_prefix: str) -> AsyncIterator[MakePair]:
    """Builds bridge pairs of the parametrised kind; `idle_timeout_s` and Redis options pass on."""
    made: list[StreamBridge] = []
    clients: list[aioredis.Redis] = []

    def make(idle_timeout_s: float = 30.0, **redis_options: Any) -> Pair:
        if request.param == "local":
            local = LocalStreamBridge(idle_timeout_s=idle_timeout_s)
            made.append(local)
            return local, local
        pair = []
        for _ in range(2):
            client = aioredis.Redis.from_url(REDIS_URL)
            clients.append(client)
            pair.append(
                RedisStreamBridge(client, idle_timeout_s=idle_timeout_s, prefix=redis_prefix, **redis_options)
            )
        made.extend(pair)
        return pair[0], pair[1]

    yield make
    for bridge in made:
        await bridge.aclose()
    for client in clients:
        await client.aclose()


@pytest.fixture
def pair(make_pair: MakePair) -> Pair:
    return make_pair()


async def collect(bridge: StreamBridge, stream_id: str) -> list[bytes]:
    return [event async for event in bridge.events(stream_id)]


def splits(body: bytes) -> Iterator[list[bytes]]:
    """The body cut into pieces of each size, and at every blank line's middle."""
    for size in (1, 2, 3, 7, 16, 64, len(body)):
        yield [body[i : i + size] for i in range(0, len(body), size)]
    yield body.replace(b"\n\n", b"\n\x00\n").split(b"\x00")


async def test_events_reframed_across_any_split(pair: Pair) -> None:
    reader, writer_side = pair
    for pieces in splits(BODY):
        stream_id, token = reader.open()
        reading = asyncio.create_task(collect(reader, stream_id))
        writer = await writer_side.writer(stream_id, token)
        for piece in pieces:
            await writer.send(piece)
        await writer.finish()
        assert await asyncio.wait_for(reading, 10) == EVENTS, pieces
        reader.close(stream_id)


async def test_events_written_before_the_reader_starts_are_kept(pair: Pair) -> None:
    reader, writer_side = pair
    stream_id, token = reader.open()
    writer = await writer_side.writer(stream_id, token)
    await writer.send(BODY[:10])
    await writer.send(b"")  # nothing: ignored
    await writer.send(BODY[10:] + b"data: no blank line at the end")
    await writer.finish()
    assert await asyncio.wait_for(collect(reader, stream_id), 10) == [
        *EVENTS,
        b"data: no blank line at the end\n\n",
    ]
    reader.close(stream_id)


async def test_finish_ends_the_iteration(pair: Pair) -> None:
    reader, writer_side = pair
    stream_id, token = reader.open()
    events = aiter(reader.events(stream_id))
    first = asyncio.ensure_future(anext(events))
    writer = await writer_side.writer(stream_id, token)
    await writer.send(EVENTS[0])
    assert await asyncio.wait_for(first, 10) == EVENTS[0]
    waiting = asyncio.ensure_future(anext(events, None))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # no more events yet: the reader waits
    await writer.finish()
    assert await asyncio.wait_for(waiting, 10) is None
    reader.close(stream_id)

    empty_id, empty_token = reader.open()
    await (await writer_side.writer(empty_id, empty_token)).finish()
    assert await asyncio.wait_for(collect(reader, empty_id), 10) == []
    reader.close(empty_id)


async def test_wrong_secret_or_unknown_id_is_refused(pair: Pair) -> None:
    reader, writer_side = pair
    stream_id, token = reader.open()
    other_id, other_token = reader.open()
    with pytest.raises(UnknownStream):
        await writer_side.writer(stream_id, "not-the-secret")
    with pytest.raises(UnknownStream):
        await writer_side.writer(stream_id, other_token)
    with pytest.raises(UnknownStream):
        await writer_side.writer("no-such-stream", token)
    with pytest.raises(UnknownStream):
        await writer_side.writer("{bad/id}", token)
    with pytest.raises(UnknownStream):
        await anext(aiter(reader.events("no-such-stream")))
    await writer_side.writer(stream_id, token)  # the right pair is accepted
    reader.close(stream_id)
    reader.close(other_id)


async def send_until_refused(writer: StreamWriter) -> None:
    async with asyncio.timeout(5):
        while True:  # the Redis bridge deletes the stream's keys in the background
            await writer.send(EVENTS[1])
            await asyncio.sleep(0.01)


async def test_reader_closing_stops_the_writer(pair: Pair) -> None:
    reader, writer_side = pair
    stream_id, token = reader.open()
    writer = await writer_side.writer(stream_id, token)
    await writer.send(EVENTS[0])
    reader.close(stream_id)
    with pytest.raises(StreamClosed):
        await send_until_refused(writer)
    await writer.finish()  # nobody to tell: not an error
    with pytest.raises(UnknownStream):  # and a new callback for it is refused
        await writer_side.writer(stream_id, token)


async def test_a_silent_stream_stalls(make_pair: MakePair) -> None:
    reader, writer_side = make_pair(idle_timeout_s=0.3, block_ms=100)
    stream_id, token = reader.open()
    writer = await writer_side.writer(stream_id, token)
    await writer.send(EVENTS[0])
    events = aiter(reader.events(stream_id))
    assert await anext(events) == EVENTS[0]
    with pytest.raises(StreamStalled):
        await asyncio.wait_for(anext(events), 5)
    reader.close(stream_id)


# --- Redis only ---------------------------------------------------------------------------


@pytest.fixture
async def redis_client() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(REDIS_URL)
    yield client
    await client.aclose()


async def test_redis_replicas_share_streams_and_clean_up(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    other = aioredis.Redis.from_url(REDIS_URL)
    a = RedisStreamBridge(redis_client, idle_timeout_s=30, prefix=redis_prefix)
    b = RedisStreamBridge(other, idle_timeout_s=30, prefix=redis_prefix)
    stream_id, token = a.open()
    reading = asyncio.create_task(collect(a, stream_id))
    # On the other replica, before `a` has even stored the digest: b waits for it (open_grace_ms).
    writer = await b.writer(stream_id, token)
    for event in EVENTS:
        await writer.send(event)
    await writer.finish()
    assert await asyncio.wait_for(reading, 10) == EVENTS

    auth, stream = f"{redis_prefix}{{{stream_id}}}:auth", f"{redis_prefix}{{{stream_id}}}"
    assert 0 < await redis_client.ttl(auth) <= a.ttl_s  # the secret is kept only as its digest
    assert token.encode() not in await redis_client.get(auth)
    assert 0 < await redis_client.ttl(stream) <= a.ttl_s
    a.close(stream_id)
    await a.aclose()  # waits for the keys to go
    assert await redis_client.exists(auth, stream) == 0
    await b.aclose()
    await other.aclose()


async def test_redis_reader_that_falls_behind_the_trim_fails(
    redis_prefix: str, redis_client: aioredis.Redis
) -> None:
    bridge = RedisStreamBridge(redis_client, idle_timeout_s=30, prefix=redis_prefix, max_len=10)
    stream_id, token = bridge.open()
    writer = await bridge.writer(stream_id, token)
    for _ in range(1000):
        await writer.send(EVENTS[0])
    await writer.finish()
    with pytest.raises(BridgeError, match="lost"):
        await collect(bridge, stream_id)
    bridge.close(stream_id)
    await bridge.aclose()


class _Proxy:
    """A TCP relay to the real Redis that can be cut: Redis becoming unreachable."""

    def __init__(self) -> None:
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _serve(self, down_r: asyncio.StreamReader, down_w: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", 6379)
        self._writers += [down_w, up_w]

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            w.close()

        await asyncio.gather(pipe(down_r, up_w), pipe(up_r, down_w))

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for w in self._writers:
            w.transport.abort()
        await self._server.wait_closed()


async def test_redis_unreachable_breaks_both_ends(redis_prefix: str, redis_client: aioredis.Redis) -> None:
    proxy = _Proxy()
    await proxy.start()
    via_proxy = aioredis.Redis.from_url(f"redis://127.0.0.1:{proxy.port}/0")
    reader = RedisStreamBridge(via_proxy, idle_timeout_s=30, prefix=redis_prefix)
    writer_side = RedisStreamBridge(redis_client, idle_timeout_s=30, prefix=redis_prefix)
    stream_id, token = reader.open()
    events = aiter(reader.events(stream_id))
    writer = await writer_side.writer(stream_id, token)
    await writer.send(EVENTS[0])
    assert await asyncio.wait_for(anext(events), 10) == EVENTS[0]
    waiting = asyncio.ensure_future(anext(events))
    await asyncio.sleep(0.1)  # the reader is blocked in XREAD
    await proxy.cut()
    with pytest.raises(BridgeUnavailable):
        await asyncio.wait_for(waiting, 10)

    # The writer's side, on a replica that cannot reach Redis.
    with pytest.raises(BridgeUnavailable):
        await reader.writer(stream_id, token)
    # A stream opened while Redis is unreachable: storing its digest fails, and the reader is told.
    new_id, _ = reader.open()
    with pytest.raises(BridgeUnavailable):
        await anext(aiter(reader.events(new_id)))
    reader.close(new_id)
    reader.close(stream_id)
    await reader.aclose()
    await writer_side.aclose()
    await via_proxy.aclose()


async def test_callback_answers_503_when_redis_is_unreachable(tmp_path: Path) -> None:
    settings = load_settings(
        None,
        server={"access_log": False},
        store={"url": f"sqlite:///{tmp_path / 'h.db'}"},
        redis={"url": f"redis://127.0.0.1:{free_port()}/0"},  # nothing listens there
    )
    transport = httpx.ASGITransport(app=create_app(settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        resp = await client.post(
            "/internal/streams/abc", content=b"data: x\n\n", headers={"Authorization": "Bearer t"}
        )
    assert resp.status_code == 503
    assert resp.json()["error"]["code"] == "service_unavailable"
    assert "Redis" in resp.json()["error"]["message"]
