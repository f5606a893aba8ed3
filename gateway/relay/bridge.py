"""The stream bridge: events a site function POSTs to the gateway, to the request waiting for them.

`infer_stream` (endpoints/functions.py) sends a stream's SSE events to
``POST /internal/streams/{stream_id}`` with a per-stream secret. The gateway request that opened
the stream reads them from the bridge as they arrive: no polling. `StreamBridge` is the
interface; `LocalStreamBridge` (here) serves a gateway that is one process, where the callback
always reaches the process holding the client; `RedisStreamBridge` (`bridge_redis`) carries
the events through Redis Streams when replicas are several and the callback may reach any.

The opening side (`open`, `events`, `close`) belongs to the request that relays the stream;
the writing side (`writer`, then `send`… `finish`) to the callback request. A writer learns
that the reader has gone from `StreamClosed`; a reader whose stream cannot be carried any
more gets a `BridgeError` from `events`.
"""

from __future__ import annotations

import abc
import asyncio
import hashlib
import hmac
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field


class StreamClosed(Exception):
    """The reader of this stream has gone (its client left): stop sending."""


class UnknownStream(Exception):
    """No open stream has this id and secret."""


class BridgeError(Exception):
    """The bridge cannot carry this stream any further (its reader gets no more events)."""


class BridgeUnavailable(BridgeError):
    """The store the bridge runs through (Redis) cannot be reached."""


class StreamStalled(BridgeError):
    """Nothing arrived on the stream for longer than the bridge's idle limit."""


class StreamWriter(abc.ABC):
    """The writing end of one stream, held by the callback request."""

    @abc.abstractmethod
    async def send(self, data: bytes) -> None:
        """Pass on a piece of the body (any split of the events); StreamClosed if nobody reads."""

    @abc.abstractmethod
    async def finish(self) -> None:
        """The body is complete: the reader's `events` ends (a no-op if the reader has gone)."""


class StreamBridge(abc.ABC):
    """Carries the events of streams from the callback requests to the requests that opened them."""

    @abc.abstractmethod
    def open(self) -> tuple[str, str]:
        """A new stream: (id, secret). The secret is only kept as a digest."""

    @abc.abstractmethod
    async def writer(self, stream_id: str, token: str) -> StreamWriter:
        """The writing end, for the callback request; UnknownStream for a bad id or secret."""

    @abc.abstractmethod
    def events(self, stream_id: str) -> AsyncIterator[bytes]:
        """Whole SSE events (each ending in a blank line) as they arrive; ends when the writer
        finishes. UnknownStream if the stream is not open; a BridgeError if it breaks."""

    @abc.abstractmethod
    def close(self, stream_id: str) -> None:
        """The reader is done (or gone): forget the stream; a writer still sending is told."""

    async def aclose(self) -> None:  # noqa: B027 (optional: nothing to release by default)
        """Release what the bridge holds, at shutdown."""


def new_stream() -> tuple[str, str, bytes]:
    """A fresh stream id, its secret, and the secret's digest (all a bridge keeps)."""
    token = secrets.token_urlsafe(32)
    return secrets.token_urlsafe(16), token, token_digest(token)


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def same_digest(stored: bytes | None, token: str) -> bool:
    """Whether `token` is the secret whose digest is `stored`, compared in constant time."""
    return stored is not None and hmac.compare_digest(stored, token_digest(token))


class SSEFramer:
    """Cuts a body that arrives in arbitrary pieces into whole SSE events."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> list[bytes]:
        self._pending += data
        events = []
        while (cut := self._pending.find(b"\n\n")) >= 0:
            events.append(self._pending[: cut + 2])
            self._pending = self._pending[cut + 2 :]
        return events

    def rest(self) -> bytes | None:
        """What is left at the end, as a last event (a writer may omit the final blank line)."""
        pending, self._pending = self._pending, b""
        if not pending.strip():
            return None
        return pending if pending.endswith(b"\n\n") else pending + b"\n\n"


@dataclass
class _Channel:
    token_digest: bytes
    queue: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)  # None: the end
    closed: bool = False  # the reader left; the writer should stop


class LocalStreamBridge(StreamBridge):
    """The bridge within one process: an asyncio queue per stream.

    `idle_timeout_s`: `events` raises StreamStalled when nothing arrives for that long (None:
    wait as long as it takes).
    """

    def __init__(self, *, idle_timeout_s: float | None = None) -> None:
        self.idle_timeout_s = idle_timeout_s
        self._channels: dict[str, _Channel] = {}

    def open(self) -> tuple[str, str]:
        stream_id, token, digest = new_stream()
        self._channels[stream_id] = _Channel(digest)
        return stream_id, token

    async def writer(self, stream_id: str, token: str) -> StreamWriter:
        channel = self._channels.get(stream_id)
        if channel is None or not same_digest(channel.token_digest, token):
            raise UnknownStream(stream_id)
        return _LocalWriter(channel)

    async def events(self, stream_id: str) -> AsyncIterator[bytes]:
        channel = self._channels.get(stream_id)
        if channel is None:
            raise UnknownStream(stream_id)
        framer = SSEFramer()
        while True:
            try:
                async with asyncio.timeout(self.idle_timeout_s):
                    data = await channel.queue.get()
            except TimeoutError:
                raise StreamStalled(f"nothing arrived for {self.idle_timeout_s:g} s") from None
            if data is None:
                if (rest := framer.rest()) is not None:
                    yield rest
                return
            for event in framer.feed(data):
                yield event

    def close(self, stream_id: str) -> None:
        channel = self._channels.pop(stream_id, None)
        if channel is not None:
            channel.closed = True
            channel.queue.put_nowait(None)


class _LocalWriter(StreamWriter):
    def __init__(self, channel: _Channel) -> None:
        self._channel = channel

    async def send(self, data: bytes) -> None:
        if self._channel.closed:
            raise StreamClosed
        if data:
            self._channel.queue.put_nowait(data)

    async def finish(self) -> None:
        if not self._channel.closed:
            self._channel.queue.put_nowait(None)
