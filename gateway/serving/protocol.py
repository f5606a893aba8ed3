"""uvicorn's HTTP/1.1 protocol, with the inference POSTs handed to the request lane.

`HearthHttpProtocol` is what `hearth serve` runs (`gateway.server`). For a ``POST`` to one of
the inference routes it makes a `LaneCycle` instead of uvicorn's ASGI cycle; the request is
then served by `gateway.serving.lane.Lane` without ASGI messages. Every other request (and
every request when the app has no lane) is uvicorn's, unchanged, through the coalescing
transport of `gateway.coalesce`. The keep-alive timeout is uvicorn's too, kept with one timer
per idle period instead of one per response (see `on_response_complete`).

Why: on a 2-core login node where the load generator, the gateway and the engine share the
cores, the ASGI layers (message dicts, the server's re-validation of headers, middleware
wrappers of send and receive, a timer per request to notice a client leaving) were a third of
the gateway's CPU per request (docs/performance.md).
"""

from __future__ import annotations

import asyncio
from typing import Any

import httptools

from gateway.coalesce import CoalescingHttpToolsProtocol
from gateway.serving.cycle import LaneCycle
from gateway.serving.lane import Lane

__all__ = ["HearthHttpProtocol"]


class HearthHttpProtocol(CoalescingHttpToolsProtocol):
    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        lane = getattr(config.app, "lane", None)
        self._lane: Lane | None = lane if isinstance(lane, Lane) else None
        self._idle_since: float | None = None  # the loop's clock at the last response, if idle

    def on_headers_complete(self) -> None:
        lane = self._lane
        parser = self.parser
        if (
            lane is None
            or parser.get_method() != b"POST"
            or self.limit_concurrency is not None
            or self.root_path
            or parser.should_upgrade()
        ):
            super().on_headers_complete()
            return
        url = httptools.parse_url(self.url)
        path = url.path
        if path not in lane.paths:
            super().on_headers_complete()
            return
        scope = self.scope
        http_version = parser.get_http_version()
        scope["method"] = "POST"
        if http_version != "1.1":
            scope["http_version"] = http_version
        scope["path"] = path.decode("ascii")
        scope["raw_path"] = path
        scope["query_string"] = url.query or b""
        existing = self.cycle
        self.cycle = LaneCycle(
            lane.serve,
            scope=scope,
            transport=self.transport,
            flow=self.flow,
            logger=self.logger,
            access_logger=self.access_logger,
            access_log=self.access_log,
            default_headers=self.server_state.default_headers,
            message_event=asyncio.Event(),
            expect_100_continue=self.expect_100_continue,
            keep_alive=http_version != "1.0" and parser.should_keep_alive(),
            on_response=self.on_response_complete,
        )
        if existing is None or existing.response_complete:
            self._start_asgi_task(self.cycle, self.app)
        else:  # pipelined: wait for the one before (as uvicorn does)
            self.flow.pause_reading()
            self.pipeline.appendleft((self.cycle, self.app))

    def connection_lost(self, exc: Exception | None) -> None:
        cycle = self.cycle
        super().connection_lost(exc)
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None
        if isinstance(cycle, LaneCycle) and cycle.disconnected:
            cycle.client_left()

    # -- keep-alive: uvicorn arms a timer after every response and cancels it when the next
    # request arrives, two timer operations per request; here a timer armed when the
    # connection goes idle checks, when it fires, whether it has been idle that long since.

    def on_response_complete(self) -> None:
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            self._idle_since = None
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        self._idle_since = now = self.loop.time()
        if self.timeout_keep_alive_task is None:
            due = now + self.timeout_keep_alive
            self.timeout_keep_alive_task = self.loop.call_at(due, self._keep_alive_due)

    def _unset_keepalive_if_required(self) -> None:  # uvicorn calls this as data arrives
        self._idle_since = None

    def _keep_alive_due(self) -> None:
        self.timeout_keep_alive_task = None
        idle_since = self._idle_since
        if idle_since is None or self.transport.is_closing():
            return  # busy: the next response arms the timer again
        due = idle_since + self.timeout_keep_alive
        if due <= self.loop.time() + 0.001:  # (timers may fire within a millisecond early)
            self.timeout_keep_alive_handler()  # closes the connection
        else:
            self.timeout_keep_alive_task = self.loop.call_at(due, self._keep_alive_due)
