"""One socket write per non-streaming response where uvicorn would make two.

uvicorn's HTTP/1.1 protocol writes a response's status line and headers as soon as the app
sends ``http.response.start``, and the body with the following ``http.response.body``: two
send(2) calls and two TCP segments for every JSON answer, so the client wakes up twice too. On
a login node where the load generator, the gateway and the engine share two cores, that second
write is a measurable share of the whole request (docs/performance.md).

Under `hearth serve` the inference POSTs bypass this (the request lane, `gateway.serving`, writes
each answer in one write itself); it serves every other route's JSON answers.

`CoalescingHttpToolsProtocol` gives uvicorn a transport that can hold one write back: the
request middleware (``gateway.middleware``) asks it to, through the ASGI scope's
``extensions["hearth.hold_head"]``, just before it passes on the start of a response that has a
Content-Length (a whole body follows at once). The held head then leaves together with the
body's write, immediately, in the same send(2). Streams (chunked) are not held: their head goes
out at once, as before. Everything else (closing, flow control, extra info) goes straight to
the real transport, with a held head sent before a close.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.middleware import HOLD_HEAD

__all__ = ["CoalescingHttpToolsProtocol", "CoalescingTransport"]


class CoalescingTransport:
    """A write transport that can hold the next write back and send it with the one after."""

    __slots__ = ("_held", "_hold", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._hold = False
        self._held: bytes | None = None

    def hold_next(self) -> None:
        """Keep the next write until the following one (or a close)."""
        self._hold = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._held is not None:
            data = self._held + bytes(data)
            self._held = None
        elif self._hold:
            self._hold = False
            self._held = bytes(data)
            return
        self._transport.write(data)

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        """Send a held write now."""
        self._hold = False
        if self._held is not None:
            held, self._held = self._held, None
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + len(self._held or b"")

    def __getattr__(self, name: str) -> Any:
        # is_closing, abort, get_extra_info, pause_reading, resume_reading, set_protocol ...
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, writing through a `CoalescingTransport` whose `hold_next`
    each request's scope offers as ``extensions["hearth.hold_head"]``."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._coalescing = CoalescingTransport(transport)
        super().connection_made(cast(asyncio.Transport, self._coalescing))

    def on_headers_complete(self) -> None:
        extensions: dict[str, Any] = self.scope.setdefault("extensions", {})
        extensions[HOLD_HEAD] = self._coalescing.hold_next
        super().on_headers_complete()
