"""A real upstream for relay, routing and dispatch tests: an aiohttp server on 127.0.0.1 that
records every request it gets and answers as the test scripts it.

    async with RecordingUpstream() as up:
        up.reply = up.sse_reply(b'data: {"x":1}\\n\\n', b"data: [DONE]\\n\\n")
        stream = await relay.open_stream(up.upstream(), call)
        ...
        assert up.seen[-1].headers["X-Request-ID"] == ...

Replies are plain coroutine functions of the aiohttp request (`json_reply`, `raw_reply` and the
methods `sse_reply` and `slow_reply` build the usual ones), so a test can also write its own.
(It could move to tests/support/ if other test packages want it.)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from gateway.relay.base import Upstream

Reply = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Seen:
    """One request as the upstream received it."""

    method: str
    path: str
    headers: CIMultiDict[str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


def json_reply(obj: Any, status: int = 200) -> Reply:
    async def reply(request: web.Request) -> web.StreamResponse:
        return web.Response(body=orjson.dumps(obj), status=status, content_type="application/json")

    return reply


def raw_reply(body: bytes, content_type: str, status: int = 200) -> Reply:
    async def reply(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, status=status, headers={"Content-Type": content_type})

    return reply


class RecordingUpstream:
    """The server; `reply` answers every request (any method, any path)."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.reply: Reply = json_reply({"ok": True})
        self.disconnects = 0  # streams whose client went away before the end
        self._closing = asyncio.Event()
        self._server: TestServer | None = None

    async def __aenter__(self) -> RecordingUpstream:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._server = TestServer(app, host="127.0.0.1")
        await self._server.start_server()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._closing.set()  # end pauses at once: the server need not wait for slow handlers
        await self._server.close()

    @property
    def url(self) -> str:
        """The base URL, ending in /v1."""
        assert self._server is not None
        assert self._server.port is not None
        return f"http://127.0.0.1:{self._server.port}/v1"

    def upstream(self, name: str = "rec", cluster: str = "c", api_key: str | None = "up-key") -> Upstream:
        return Upstream(name=name, cluster=cluster, base_url=self.url, api_key=api_key)

    async def pause(self, seconds: float) -> None:
        """Sleep `seconds`, or less if the server is shutting down."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), seconds)

    def slow_reply(self, seconds: float, then: Reply | None = None) -> Reply:
        """Answer (with `then`, default a JSON object) only after `seconds`."""

        async def reply(request: web.Request) -> web.StreamResponse:
            await self.pause(seconds)
            return await (then or json_reply({"late": True}))(request)

        return reply

    def sse_reply(
        self, *parts: bytes, content_type: str = "text/event-stream", delay_s: float = 0.0
    ) -> Reply:
        """Stream `parts` as written (so a test controls framing and TCP splits), then EOF,
        pausing `delay_s` after each part.

        A client that goes away mid-stream is counted in `disconnects`.
        """

        async def reply(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse(headers={"Content-Type": content_type})
            await resp.prepare(request)
            try:
                for part in parts:
                    await resp.write(part)
                    if delay_s:
                        await self.pause(delay_s)
                await resp.write_eof()
            except (ConnectionError, asyncio.CancelledError):
                self.disconnects += 1
                raise
            return resp

        return reply

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append(Seen(request.method, request.path, CIMultiDict(request.headers), body))
        return await self.reply(request)
