"""The fast lane: the inference POSTs, served without FastAPI's routing and dependency layers.

On the hot path those layers (router matching, dependency solving, five framework
middlewares) cost more CPU than everything else the gateway does for a request; on a 2-core
login node that halves throughput (measured with `python -m benchmarks.overhead`, see
docs/performance.md). The routes stay declared in `gateway.api.openai`, which documents them
(OpenAPI) and serves them when the app is used without the middleware; both call the same
`generate`, and errors go through the same `error_response`.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.api.errors import error_response, internal_error_response
from gateway.api.openai import GENERATION_ROUTES, generate
from gateway.api.responses import ClientDisconnected
from gateway.errors import HearthError
from gateway.services import Services


class FastLane:
    def __init__(self, services: Services) -> None:
        self.services = services

    @staticmethod
    def handles(scope: Scope) -> bool:
        return scope["method"] == "POST" and scope["path"] in GENERATION_ROUTES

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.answer(Request(scope, receive), receive)
        if response is not None:
            await response(scope, receive, send)

    async def answer(self, request: Request, receive: Receive) -> Response | None:
        """The response to an inference request whose body `receive` gives; None when the
        client left before it was ready (nobody to answer). Also used by `gateway.serving`,
        which writes the response straight to the connection."""
        schema, endpoint = GENERATION_ROUTES[request.scope["path"]]
        try:
            principal = await self.services.auth.authenticate(request.headers.get("authorization"))
            body = await read_body(receive)
            return await generate(request, body, principal, self.services, schema, endpoint)
        except ClientDisconnected:
            return None
        except HearthError as exc:
            return error_response(exc)
        except Exception:
            return internal_error_response(request)


async def read_body(receive: Receive) -> bytes:
    """The whole request body, straight from the ASGI messages (Starlette's `Request.body`
    does the same through two more generator layers)."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)
