"""One inference request on a connection, answered without ASGI messages.

`LaneCycle` is uvicorn's `RequestResponseCycle` for the requests `gateway.serving.protocol`
hands to the lane: the connection keeps its bookkeeping (pipelining, keep-alive, flow control,
``Expect: 100-continue``, shutdown) because the cycle keeps the same state, but the response is
written to the transport directly: a whole answer in one write, a stream as chunks, with no
message dicts, header re-validation or middleware wrappers on the way (docs/performance.md).

When the client leaves, the protocol calls `client_left`, which cancels the request's task:
the upstream request is cancelled with it, and nothing polls for the disconnect.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Callable, Coroutine
from typing import Any

from starlette.responses import Response
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, RequestResponseCycle

from gateway.api.responses import SSEResponse

__all__ = ["LaneCycle"]

Serve = Callable[["LaneCycle"], Coroutine[Any, Any, None]]
Headers = list[tuple[bytes, bytes]]


class LaneCycle(RequestResponseCycle):
    """A request the lane answers; see the module docstring."""

    def __init__(self, serve: Serve, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._serve = serve
        self.task: asyncio.Task[None] | None = None

    async def run_asgi(self, app: Any) -> None:  # uvicorn starts every cycle this way
        self.task = asyncio.current_task()
        try:
            await self._serve(self)
        except BaseException as exc:  # the lane answers its own errors; this is a bug
            self.logger.error("Exception in the gateway's request lane", exc_info=exc)
            if not self.response_started:
                await self.send_500_response()
            else:
                self.transport.close()
        finally:
            self.task = None
            self.on_response = lambda: None

    def client_left(self) -> None:
        """The connection closed before the response was complete: stop working on it."""
        if self.task is not None and not self.task.done():
            self.task.cancel()

    # -- writing the response ----------------------------------------------------------

    def respond(self, response: Response, extra: Headers) -> None:
        """Send a whole response (status, headers, body) in one write."""
        if self.disconnected or self.response_started:
            return
        body = response.body
        head = self._head(response.status_code, response.raw_headers, extra)
        self.transport.write(head + b"\r\n" + bytes(body))
        self._complete()

    async def stream(self, response: SSEResponse, extra: Headers) -> None:
        """Send a streaming response chunk by chunk as its events come (chunked encoding)."""
        if self.disconnected or self.response_started:
            await response.stream.aclose()
            return
        head = self._head(response.status_code, response.raw_headers, extra)
        self.transport.write(head + b"transfer-encoding: chunked\r\n\r\n")
        chunks: AsyncIterable[bytes] = response.stream
        flow, transport = self.flow, self.transport
        try:
            async for chunk in chunks:
                if flow.write_paused:
                    await flow.drain()
                if self.disconnected:
                    return
                if chunk:
                    transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            if not self.disconnected:
                transport.write(b"0\r\n\r\n")
                self._complete()
        finally:
            await response.stream.aclose()

    def _head(self, status: int, headers: Headers, extra: Headers) -> bytes:
        parts = [STATUS_LINE[status]]
        for name, value in (*self.default_headers, *headers, *extra):
            if b"\r" in value or b"\n" in value:
                raise ValueError(f"header {name!r} contains a line break")
            parts.append(b"%b: %b\r\n" % (name, value))
        if not self.keep_alive:
            parts.append(b"connection: close\r\n")
        self.response_started = True  # only now: a bad header above still gets the 500
        self.waiting_for_100_continue = False
        return b"".join(parts)

    def _complete(self) -> None:
        self.response_complete = True
        self.message_event.set()
        if not self.keep_alive:
            self.transport.close()
        self.on_response()
