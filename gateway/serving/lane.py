"""The request lane: inference POSTs served straight from the connection.

`gateway.serving.protocol` gives the lane each ``POST`` to an inference route; the lane does
what the request middleware (`gateway.middleware`) and the fast lane (`gateway.api.fastlane`)
do for it over ASGI — request id, body limit, access log, authentication, `generate` — with
the same helpers, and writes the answer through its `LaneCycle`. Everything else, and every
request when tracing is on (the server span lives in the middleware), goes through ASGI.
"""

from __future__ import annotations

import asyncio
import time
from typing import cast

from starlette.requests import Request
from starlette.types import Receive, Scope

from gateway.api.errors import error_response
from gateway.api.fastlane import FastLane
from gateway.api.openai import GENERATION_ROUTES
from gateway.api.responses import SERVER_CANCELS, SSEResponse
from gateway.middleware import RequestContextMiddleware
from gateway.serving.cycle import LaneCycle

__all__ = ["Lane"]


class Lane:
    def __init__(self, context: RequestContextMiddleware, fast_lane: FastLane) -> None:
        self.context = context
        self.fast_lane = fast_lane
        self.paths = frozenset(path.encode() for path in GENERATION_ROUTES)

    async def serve(self, cycle: LaneCycle) -> None:
        started = time.perf_counter()
        scope = cast(Scope, cycle.scope)
        context = self.context
        request_id, length = context.identify(scope, started)
        scope["extensions"] = {SERVER_CANCELS: True}  # see the CancelledError below
        extra = [(b"x-request-id", request_id.encode())]
        status = 499
        try:
            limit = context.limit_for(scope["path"])
            if (refusal := context.refuse_length(length, limit)) is not None:
                response = error_response(refusal)
            else:
                receive = cast(Receive, cycle.receive)
                if length is None:  # chunked: counted as it comes
                    receive = context.limited(receive, limit)
                answer = await self.fast_lane.answer(Request(scope, receive), receive)
                if answer is None:
                    return  # the client left; nobody to answer
                response = answer
            if isinstance(response, SSEResponse):
                status = 200
                await cycle.stream(response, extra)
            else:
                status = response.status_code
                cycle.respond(response, extra)
        except asyncio.CancelledError:
            if not cycle.disconnected:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # the client left (LaneCycle.client_left): nothing to send
        finally:
            if cycle.disconnected and not cycle.response_complete:
                status = 499
            context.log_request(scope, request_id, status, started)
