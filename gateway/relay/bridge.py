"""The stream bridge: events a site function POSTs to the gateway, to the request waiting for them.

`infer_stream` (endpoints/functions.py) sends a stream's SSE events to
``POST /internal/streams/{stream_id}`` with a per-stream secret. The gateway request that opened
the stream reads them from the bridge as they arrive: no polling. This is the in-process bridge,
for a gateway that is one process (the callback reaches the replica that holds the client);
with several replicas behind a load balancer the callback is routed back by stream id, or a
Redis Streams bridge with the same interface carries events between replicas.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field


@dataclass
class _Channel:
    token_digest: bytes
    queue: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)  # None: the end
    closed: bool = False  # the reader left; the writer should stop


class StreamClosed(Exception):
    """The reader of this stream has gone (its client left): stop sending."""


class UnknownStream(Exception):
    """No open stream has this id and secret."""


class StreamBridge:
    def __init__(self) -> None:
        self._channels: dict[str, _Channel] = {}

    def open(self) -> tuple[str, str]:
        """A new stream: (id, secret). The secret is only kept as a digest."""
        stream_id = secrets.token_urlsafe(16)
        token = secrets.token_urlsafe(32)
        self._channels[stream_id] = _Channel(hashlib.sha256(token.encode()).digest())
        return stream_id, token

    def writer(self, stream_id: str, token: str) -> _Writer:
        """The writing end, for the callback request; raises UnknownStream for a bad id or secret."""
        channel = self._channels.get(stream_id)
        digest = hashlib.sha256(token.encode()).digest()
        if channel is None or not hmac.compare_digest(channel.token_digest, digest):
            raise UnknownStream(stream_id)
        return _Writer(channel)

    async def events(self, stream_id: str) -> AsyncIterator[bytes]:
        """Whole SSE events as they arrive; ends when the writer finishes."""
        channel = self._channels[stream_id]
        pending = b""
        while True:
            data = await channel.queue.get()
            if data is None:
                if pending.strip():
                    yield pending if pending.endswith(b"\n\n") else pending + b"\n\n"
                return
            pending += data
            while (cut := pending.find(b"\n\n")) >= 0:
                yield pending[: cut + 2]
                pending = pending[cut + 2 :]

    def close(self, stream_id: str) -> None:
        """The reader is done (or gone): forget the stream; a writer still sending is told."""
        channel = self._channels.pop(stream_id, None)
        if channel is not None:
            channel.closed = True
            channel.queue.put_nowait(None)


class _Writer:
    def __init__(self, channel: _Channel) -> None:
        self._channel = channel

    def send(self, data: bytes) -> None:
        if self._channel.closed:
            raise StreamClosed
        if data:
            self._channel.queue.put_nowait(data)

    def finish(self) -> None:
        if not self._channel.closed:
            self._channel.queue.put_nowait(None)
