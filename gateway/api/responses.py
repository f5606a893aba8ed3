"""Response helpers shared by the routers: JSON bodies, worker replies, SSE streams, and
cancellation when the client disconnects (the gateway stops the worker's request too)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Awaitable, Coroutine
from typing import Any, Protocol, TypeVar

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.errors import UpstreamError
from gateway.relay.base import UpstreamReply

T = TypeVar("T")


class ClientDisconnected(Exception):
    """The client closed the connection before the answer was ready."""


class _Closable(AsyncIterable[bytes], Protocol):
    def aclose(self) -> Awaitable[None]: ...


def json_response(body: object, status: int = 200) -> Response:
    """`body` serialised with orjson as an application/json response."""
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def reply_response(reply: UpstreamReply) -> Response:
    """The worker's answer as is; a non-JSON error from it becomes an OpenAI error body."""
    if reply.status >= 400 and not _is_openai_error(reply.body):
        text = reply.body[:500].decode(errors="replace")
        err = UpstreamError(f"The worker rejected the request (HTTP {reply.status}): {text}")
        return json_response(err.body(), reply.status)
    return Response(reply.body, status_code=reply.status, media_type=reply.content_type)


def _is_openai_error(body: bytes) -> bool:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(data, dict) and isinstance(data.get("error"), dict)


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


# Requests answered sooner than this never pay for a watcher task; a client that leaves
# earlier is noticed at this point.
WATCH_DISCONNECT_AFTER_S = 0.02

# The ASGI scope extension of a request whose server (`gateway.serving`) cancels the request's
# task itself when the client leaves, and knows why when the cancellation reaches it.
SERVER_CANCELS = "hearth.server_cancels"


def cancel_on_disconnect(request: Request, work: Coroutine[Any, Any, T]) -> Awaitable[T]:
    """`work`, to be awaited, cancelled if the client disconnects first (like vLLM's
    with_cancellation); `ClientDisconnected` is raised then.

    `work` runs in the calling task; a watcher task, started only once the request has taken
    `WATCH_DISCONNECT_AFTER_S`, cancels it on disconnect. The body must have been read already.
    A request whose server cancels its task when the client leaves (`SERVER_CANCELS`) gets
    `work` as it is: nothing to watch, and the cancellation goes up to that server.
    """
    if SERVER_CANCELS in request.scope.get("extensions", ()):
        return work
    return _watched(request, work)


async def _watched(request: Request, work: Coroutine[Any, Any, T]) -> T:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    left = False
    watcher: asyncio.Task[None] | None = None

    async def watch() -> None:
        nonlocal left
        await _wait_disconnect(request.receive)
        left = True
        task.cancel()

    def start_watching() -> None:
        nonlocal watcher
        watcher = loop.create_task(watch())

    timer = loop.call_later(WATCH_DISCONNECT_AFTER_S, start_watching)
    try:
        return await work
    except asyncio.CancelledError:
        if left:
            task.uncancel()
            raise ClientDisconnected from None
        raise
    finally:
        timer.cancel()
        if watcher is not None:
            watcher.cancel()


class SSEResponse(Response):
    """Sends each chunk as it comes (no buffering); stops the stream if the client goes away."""

    media_type = "text/event-stream"

    def __init__(self, stream: _Closable) -> None:
        # Not Response.__init__: it would add content-length: 0.
        self.status_code = 200
        self.background = None
        self.raw_headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),  # tell nginx not to buffer
        ]
        self.stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        pump = asyncio.ensure_future(self._pump(send))
        watcher = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            await asyncio.wait((pump, watcher), return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not pump.done():
                pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)
            await self.stream.aclose()

    async def _pump(self, send: Send) -> None:
        try:
            async for chunk in self.stream:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the client is gone; the watcher or aclose() cleans up


def list_page(items: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    """An OpenAI cursor page from up to ``limit + 1`` items (one more tells whether there is more)."""
    data = items[:limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(items) > limit,
    }
