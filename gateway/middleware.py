"""Pure ASGI middleware (no BaseHTTPMiddleware overhead) for what every request needs:

- an X-Request-ID: the client's if it is sane, else a new one; on every response, and in
  ``scope["state"]`` for handlers to pass to the worker;
- the arrival time, for latency and TTFT;
- the body size limit: 413 (OpenAI error body) for a body over ``max_body_bytes``, whether
  declared by Content-Length or discovered while reading a chunked body;
- one JSON access-log line per request (method, path, status, duration; never headers);
- with tracing on (`gateway.tracing`), the server span of each inference request (the routes
  the fast lane serves), current for the request's task so the upstream attempts nest in it.

It sits outside FastAPI's own middleware stack (see `gateway.app.HearthApp`), so that the
fast lane (`gateway.api.fastlane`) skips the framework entirely.
"""

from __future__ import annotations

import os
import re
import time
from typing import TYPE_CHECKING, Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import HearthError, RequestTooLarge
from gateway.logs import AccessLog

# The ASGI scope extension through which `gateway.coalesce` offers to hold a response's head
# back until its body, so both leave in one write.
HOLD_HEAD = "hearth.hold_head"

if TYPE_CHECKING:
    from gateway.api.fastlane import FastLane

_SAFE_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,64}$")  # 64: the store's request_id column


class RequestContextMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        path_limits: dict[str, int] | None = None,
        log_requests: bool = True,
        fast_lane: FastLane | None = None,
    ) -> None:
        self.app = app
        self.fast_lane = fast_lane
        self.max_body = max_body_bytes
        self.path_limits = dict(path_limits or {})  # larger limits for some paths (file uploads)
        self.access_log = AccessLog() if log_requests else None
        self.tracing = fast_lane.services.tracing if fast_lane is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id, length = self.identify(scope, started)
        rid_header = (b"x-request-id", request_id.encode())
        status = 500
        # Served by `gateway.coalesce` (hearth serve): the head of a response with a Content-Length
        # may wait for its body and leave in the same write (not for HEAD: no body comes).
        hold_head = scope.get("extensions", {}).get(HOLD_HEAD) if scope["method"] != "HEAD" else None

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = message["headers"] = [*message.get("headers", ()), rid_header]
                if hold_head is not None and any(name.lower() == b"content-length" for name, _ in headers):
                    hold_head()
            await send(message)

        try:
            limit = self.limit_for(scope["path"])
            if (refusal := self.refuse_length(length, limit)) is not None:
                await _send_error(send_with_id, refusal)
                return
            app = self.fast_lane if self.fast_lane is not None and self.fast_lane.handles(scope) else self.app
            # A stream's events from a site (POST /internal/streams/…) last as long as the stream.
            unlimited = length is not None or scope["path"].startswith("/internal/streams/")
            traced = None
            if self.tracing is not None and app is self.fast_lane:
                traced = self.tracing.server_span(scope, request_id)
            try:
                await app(scope, receive if unlimited else self.limited(receive, limit), send_with_id)
            finally:
                if traced is not None:
                    traced.end(status)
        finally:
            self.log_request(scope, request_id, status, started)

    @staticmethod
    def identify(scope: Scope, started: float) -> tuple[str, bytes | None]:
        """The request's id and its declared Content-Length; the id and the arrival time go in
        ``scope["state"]`` for the handlers."""
        request_id = None
        length = None
        for name, value in scope["headers"]:
            if name == b"x-request-id" and _SAFE_ID.match(value):
                request_id = value.decode()
            elif name == b"content-length":
                length = value
        if request_id is None:
            request_id = os.urandom(16).hex()  # a random (v4-like) UUID in hex, without uuid4's cost
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["started"] = started
        return request_id, length

    def limit_for(self, path: str) -> int:
        """The largest request body accepted on `path`."""
        return self.path_limits.get(path, self.max_body) if self.path_limits else self.max_body

    def log_request(self, scope: Scope, request_id: str, status: int, started: float) -> None:
        if self.access_log is not None:
            self.access_log.request(
                request_id, scope["method"], scope["path"], status, time.perf_counter() - started
            )

    def refuse_length(self, length: bytes | None, limit: int) -> RequestTooLarge | None:
        """The 413 for a declared Content-Length that is not a number or is over `limit`."""
        if length is not None and (not length.isdigit() or int(length) > limit):
            return self.too_large(limit)
        return None

    def too_large(self, limit: int) -> RequestTooLarge:
        return RequestTooLarge(f"The request body is larger than the limit of {limit} bytes.")

    def limited(self, receive: Receive, limit: int) -> Receive:
        """A receive that raises 413 once a chunked body passes the limit."""
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise self.too_large(limit)
            return message

        return limited


async def _send_error(send: Send, error: HearthError) -> None:
    body = orjson.dumps(error.body())
    headers: list[Any] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
