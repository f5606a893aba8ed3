"""One socket write per response where uvicorn would make two.

uvicorn's HTTP/1.1 protocol writes a response's status line and headers as soon as the app
sends ``http.response.start``, and the body with the following ``http.response.body``: two
send(2) calls and two TCP segments for every non-streaming answer, so the client wakes up twice
too. On a login node where the load generator, the gateway and the engine share two cores,
that second write is a measurable share of the whole request (docs/performance.md).

`CoalescingHttpToolsProtocol` gives uvicorn a transport that keeps the bytes written during one
turn of the event loop and sends them together at the end of that turn (``loop.call_soon``).
Headers and body sent back to back go out as one segment; a stream's events, written in
separate turns, still go out as they come, delayed by no more than the rest of the turn.
Everything else (closing, flow control, extra info) goes straight to the real transport, with
any pending bytes flushed before a close.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["CoalescingHttpToolsProtocol", "CoalescingTransport"]

_JOIN_BELOW = 64 * 1024  # smaller pending writes are joined into one buffer; larger go as a list


class CoalescingTransport:
    """A write transport that sends what is written in one loop turn as one write."""

    __slots__ = ("_loop", "_pending", "_scheduled", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._scheduled = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        self._pending.append(bytes(data))
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        """Send what is pending now (the end of the turn, or before a close)."""
        self._scheduled = False
        pending = self._pending
        if not pending:
            return
        self._pending = []
        if self._transport.is_closing():
            return  # the peer is gone; asyncio would only warn about writing to it
        if len(pending) == 1:
            self._transport.write(pending[0])
        elif sum(len(p) for p in pending) < _JOIN_BELOW:
            self._transport.write(b"".join(pending))
        else:
            self._transport.writelines(pending)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(len(p) for p in self._pending)

    def __getattr__(self, name: str) -> Any:
        # is_closing, abort, get_extra_info, pause_reading, resume_reading, set_protocol ...
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, writing through a `CoalescingTransport`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(cast(asyncio.Transport, CoalescingTransport(transport, self.loop)))
