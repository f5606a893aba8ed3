"""The stream bridge over Redis Streams, for a gateway of several replicas.

A site's callback may reach any replica, so the events travel through Redis
(https://redis.io/docs/latest/develop/data-types/streams/):

- ``{prefix}{<id>}:auth`` holds the SHA-256 of the stream's secret: any replica can check a
  writer. Its presence also means "the reader is there": the reader refreshes its TTL while it
  reads, `close` deletes it, and it expires if the reader's replica dies.
- ``{prefix}{<id>}`` is the stream itself: one entry per piece of the body (``n`` its number,
  ``d`` the bytes), then one with ``e`` (the end). The writer adds them with a script that
  first checks the auth key, so nothing is added once the reader has gone (`StreamClosed`),
  trims the stream to about `max_len` entries and refreshes its TTL.

The braces make the id a hash tag: a stream's keys share one Redis Cluster slot, as the
script needs. The reader waits in ``XREAD BLOCK`` (a blocking read, not polling) from entry 0,
so nothing written before it started is missed, and gives up with StreamStalled after
`idle_timeout_s` without an entry. Each reading stream holds one Redis connection while it
waits. When Redis cannot be reached, the writer's and the reader's calls raise
BridgeUnavailable.

`open` and `close` are synchronous (the relay calls them so): `open` starts storing the
digest at once, together with an ``o`` entry ("opened") on the stream, and `events` and a
writer on this replica wait for that. A writer on another replica that finds no digest waits
up to `open_grace_ms` in ``XREAD BLOCK`` for the ``o`` entry before it refuses the stream: the
site function opens its callback only once the worker has answered, so the digest is there
long before in practice, but nothing else orders the two. `close` deletes the keys in the
background; `aclose` waits for what is pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.relay.bridge import (
    BridgeError,
    BridgeUnavailable,
    SSEFramer,
    StreamBridge,
    StreamClosed,
    StreamStalled,
    StreamWriter,
    UnknownStream,
    new_stream,
    same_digest,
)

log = logging.getLogger(__name__)

PREFIX = "hearth:stream:"
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # what secrets.token_urlsafe makes

# KEYS: stream, auth. ARGV: max_len, ttl_s, then the entry's field/value pairs.
# 1 when added; 0 when the auth key is gone (the reader closed the stream, or it expired).
_ADD = """
if redis.call('EXISTS', KEYS[2]) == 0 then
  return 0
end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""

_ERRORS = (RedisError, OSError)


class _Keys:
    __slots__ = ("auth", "stream")

    def __init__(self, prefix: str, stream_id: str) -> None:
        self.stream = f"{prefix}{{{stream_id}}}"
        self.auth = f"{self.stream}:auth"


class RedisStreamBridge(StreamBridge):
    """`StreamBridge` through Redis Streams, shared by every replica using the same Redis.

    `idle_timeout_s`: how long a reader waits for the next entry before StreamStalled; the keys
    live a minute longer than that without being refreshed. `prefix` namespaces the keys.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        idle_timeout_s: float = 180.0,
        prefix: str = PREFIX,
        max_len: int = 10_000,
        block_ms: int = 1000,
        read_count: int = 512,
        open_grace_ms: int = 1000,
    ) -> None:
        self.redis = client
        self.idle_timeout_s = idle_timeout_s
        self.prefix = prefix
        self.max_len = max_len
        self.block_ms = block_ms
        self.read_count = read_count
        self.open_grace_ms = open_grace_ms
        self.ttl_s = math.ceil(idle_timeout_s) + 60
        self._add = client.register_script(_ADD)
        self._opening: dict[str, asyncio.Task[None]] = {}  # digests not yet known to be stored
        self._closing: set[asyncio.Task[None]] = set()

    def open(self) -> tuple[str, str]:
        stream_id, token, digest = new_stream()
        task = asyncio.get_running_loop().create_task(self._store(stream_id, digest))
        self._opening[stream_id] = task
        task.add_done_callback(lambda t: self._stored(stream_id, t))
        return stream_id, token

    async def writer(self, stream_id: str, token: str) -> StreamWriter:
        if not _ID.fullmatch(stream_id):
            raise UnknownStream(stream_id)
        await self._opened(stream_id)
        keys = _Keys(self.prefix, stream_id)
        try:
            stored = await self.redis.get(keys.auth)
            if stored is None and await self.redis.xread(
                {keys.stream: "0"}, count=1, block=self.open_grace_ms
            ):
                stored = await self.redis.get(keys.auth)  # opened on another replica just now
        except _ERRORS as exc:
            raise BridgeUnavailable(f"Redis: {exc}") from exc
        if not isinstance(stored, bytes) or not same_digest(stored, token):
            raise UnknownStream(stream_id)
        return _RedisWriter(self, keys)

    async def events(self, stream_id: str) -> AsyncIterator[bytes]:
        await self._opened(stream_id)
        keys = _Keys(self.prefix, stream_id)
        try:
            if not await self.redis.exists(keys.auth):
                raise UnknownStream(stream_id)
        except _ERRORS as exc:
            raise BridgeUnavailable(f"Redis: {exc}") from exc
        framer = SSEFramer()
        last: bytes | str = "0"
        expected = 0  # the number of the next entry; a gap means the stream was trimmed past us
        heard = refreshed = time.monotonic()
        while True:
            try:
                reply = await self.redis.xread(
                    {keys.stream: last}, count=self.read_count, block=self.block_ms
                )
                now = time.monotonic()
                if now - refreshed > self.ttl_s / 3:  # still reading: keep the stream open
                    await self.redis.expire(keys.auth, self.ttl_s)
                    refreshed = now
            except _ERRORS as exc:
                raise BridgeUnavailable(f"Redis: {exc}") from exc
            entries = _entries(reply, keys.stream)
            if not entries:
                if now - heard > self.idle_timeout_s:
                    raise StreamStalled(f"nothing arrived for {self.idle_timeout_s:g} s")
                continue
            heard = now
            for entry_id, fields in entries:
                last = entry_id
                if b"o" in fields:  # "opened", from `open`
                    continue
                if int(fields[b"n"]) != expected:
                    raise BridgeError(f"events were lost: the reader fell over {self.max_len} behind")
                expected += 1
                if b"e" in fields:
                    if (rest := framer.rest()) is not None:
                        yield rest
                    return
                for event in framer.feed(fields[b"d"]):
                    yield event

    def close(self, stream_id: str) -> None:
        opening = self._opening.pop(stream_id, None)
        task = asyncio.get_running_loop().create_task(self._forget(stream_id, opening))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        pending = [*self._opening.values(), *self._closing]
        self._opening.clear()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _store(self, stream_id: str, digest: bytes) -> None:
        keys = _Keys(self.prefix, stream_id)
        async with self.redis.pipeline(transaction=True) as tx:
            tx.set(keys.auth, digest, ex=self.ttl_s)
            tx.xadd(keys.stream, {b"o": b""}, maxlen=self.max_len)
            tx.expire(keys.stream, self.ttl_s)
            await tx.execute()

    def _stored(self, stream_id: str, task: asyncio.Task[None]) -> None:
        # Kept while it failed, so that `events` reports why; `close` drops it.
        if not task.cancelled() and task.exception() is None and self._opening.get(stream_id) is task:
            del self._opening[stream_id]

    async def _opened(self, stream_id: str) -> None:
        """Wait until the digest of a stream opened here is stored."""
        task = self._opening.get(stream_id)
        if task is None:
            return
        try:
            await asyncio.shield(task)
        except _ERRORS as exc:
            raise BridgeUnavailable(f"Redis: {exc}") from exc

    async def _forget(self, stream_id: str, opening: asyncio.Task[None] | None) -> None:
        if opening is not None:  # delete after the digest is stored, not before
            with contextlib.suppress(Exception):
                await opening
        keys = _Keys(self.prefix, stream_id)
        try:
            await self.redis.delete(keys.auth, keys.stream)
        except _ERRORS as exc:
            log.warning(
                "cannot delete a closed stream's keys; they expire in %d s", self.ttl_s,
                extra={"stream_id": stream_id, "error": str(exc)},
            )  # fmt: skip


class _RedisWriter(StreamWriter):
    def __init__(self, bridge: RedisStreamBridge, keys: _Keys) -> None:
        self._bridge = bridge
        self._keys = keys
        self._n = 0

    async def send(self, data: bytes) -> None:
        if data and not await self._append(b"d", data):
            raise StreamClosed

    async def finish(self) -> None:
        await self._append(b"e", b"")

    async def _append(self, name: bytes, value: bytes) -> bool:
        b = self._bridge
        args: list[bytes | int] = [b.max_len, b.ttl_s, b"n", self._n, name, value]
        try:
            added = await b._add(keys=[self._keys.stream, self._keys.auth], args=args)
        except _ERRORS as exc:
            raise BridgeUnavailable(f"Redis: {exc}") from exc
        self._n += 1
        return bool(added)


def _entries(reply: Any, stream: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """The entries of one stream in an XREAD reply (RESP2: a list of pairs; RESP3: a mapping)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        found = reply.get(stream.encode()) or reply.get(stream) or [[]]
        return list(found[0])
    return list(reply[0][1])
