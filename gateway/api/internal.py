"""Routes sites call back on: the events of a stream relayed through Globus Compute.

``POST /internal/streams/{id}`` takes one chunked body of SSE events from `infer_stream`,
authenticated by the stream's own secret (``Authorization: Bearer …``; compared in constant
time). It answers 204 when the stream is complete, 410 as soon as the client it was for has
gone (which stops the site function and the engine), 404 for an unknown id or wrong secret.
Not part of the public API (not in the OpenAPI document).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.deps import ServicesDep
from gateway.errors import NotFound
from gateway.relay.bridge import StreamClosed, UnknownStream

router = APIRouter(prefix="/internal", include_in_schema=False)

STREAMS_PREFIX = "/internal/streams/"


@router.post("/streams/{stream_id}")
async def stream_events(stream_id: str, request: Request, services: ServicesDep) -> Response:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    try:
        writer = services.bridge.writer(stream_id, token.strip() if scheme.lower() == "bearer" else "")
    except UnknownStream:
        raise NotFound("No such stream.") from None
    try:
        async for chunk in request.stream():
            writer.send(chunk)
    except StreamClosed:
        # The client left. Answer now and drop the connection: the site function sees it on its
        # next write and closes the engine's stream, which aborts the generation.
        return Response(status_code=410, headers={"Connection": "close"})
    writer.finish()
    return Response(status_code=204)
