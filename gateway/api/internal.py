"""Routes sites call back on: the events of a stream relayed through Globus Compute.

``POST /internal/streams/{id}`` takes one chunked body of SSE events from `infer_stream`,
authenticated by the stream's own secret (``Authorization: Bearer …``; compared in constant
time) and hands it to the stream bridge (`gateway.relay.bridge`), which may be Redis when the
request that waits for the events is on another replica. It answers 204 when the stream is
complete, 410 as soon as the client it was for has gone (which stops the site function and the
engine), 404 for an unknown id or wrong secret, 503 when the bridge's Redis cannot be reached.
Not part of the public API (not in the OpenAPI document).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from gateway.deps import ServicesDep
from gateway.errors import NotFound, ServiceUnavailable
from gateway.relay.bridge import BridgeUnavailable, StreamClosed, UnknownStream

router = APIRouter(prefix="/internal", include_in_schema=False)

STREAMS_PREFIX = "/internal/streams/"


@router.post("/streams/{stream_id}")
async def stream_events(stream_id: str, request: Request, services: ServicesDep) -> Response:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    try:
        writer = await services.bridge.writer(stream_id, token.strip() if scheme.lower() == "bearer" else "")
        try:
            async for chunk in request.stream():
                await writer.send(chunk)
        except StreamClosed:
            # The client left. Answer now and drop the connection: the site function sees it on
            # its next write and closes the engine's stream, which aborts the generation.
            return Response(status_code=410, headers={"Connection": "close"})
        except ClientDisconnect:
            pass  # the site broke off: end the stream; the task's result says what went wrong
        await writer.finish()
    except UnknownStream:
        raise NotFound("No such stream.") from None
    except BridgeUnavailable:
        # The site function reports the refusal; the reader's stream ends with an error event.
        raise ServiceUnavailable(
            "The gateway cannot reach its stream bridge (Redis).", headers={"Connection": "close"}
        ) from None
    return Response(status_code=204)
