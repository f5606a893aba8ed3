"""DirectRelay: HTTP/SSE passthrough from the gateway to an OpenAI-compatible worker.

One keep-alive HTTP/1.1 connection pool (`gateway.relay.http1`) serves every upstream. It was
chosen over aiohttp and httpx after measuring all three with `python -m benchmarks.clients`
(numbers in docs/performance.md): the client is most of the relay's CPU per request.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator

import orjson

from endpoints.sse import EventFramer
from gateway.relay.base import (
    BadResponse,
    ConnectFailed,
    EventStream,
    Relay,
    StreamBroken,
    TimedOut,
    Upstream,
    UpstreamCall,
    UpstreamReply,
    worker_trouble,
)
from gateway.relay.http1 import ConnectError, ConnectionLost, ConnectionPool, Origin, Response

_JSON = "application/json"
_HEX32 = re.compile(r"[0-9a-f]{32}")


class DirectRelay(Relay):
    def __init__(
        self,
        *,
        connect_timeout_s: float = 5.0,
        request_timeout_s: float = 600.0,
        stream_idle_timeout_s: float = 120.0,
        max_connections: int = 1000,
    ) -> None:
        self._request_timeout = request_timeout_s
        self._idle_timeout = stream_idle_timeout_s
        self._pool = ConnectionPool(max_connections=max_connections, connect_timeout=connect_timeout_s)
        self._targets: dict[str, tuple[Origin, str]] = {}

    def _target(self, upstream: Upstream, path: str) -> tuple[Origin, str]:
        found = self._targets.get(upstream.base_url)
        if found is None:
            found = self._targets[upstream.base_url] = Origin.of(upstream.base_url)
        origin, prefix = found
        return origin, f"{prefix}/{path}"

    @staticmethod
    def _headers(upstream: Upstream, call: UpstreamCall, accept: str) -> dict[str, str]:
        headers = {
            "Content-Type": _JSON,
            "Accept": accept,
            "X-Request-ID": upstream_request_id(call.request_id),
            **_auth(upstream),
        }
        if call.traceparent is not None:  # tracing is on: the worker continues the trace
            headers["traceparent"] = call.traceparent
            if call.tracestate:
                headers["tracestate"] = call.tracestate
        return headers

    async def send(self, upstream: Upstream, call: UpstreamCall) -> UpstreamReply:
        origin, target = self._target(upstream, call.path)
        headers = self._headers(upstream, call, _JSON)
        resp: Response | None = None
        deadline = asyncio.get_running_loop().time() + self._request_timeout
        try:
            resp = await self._pool.request("POST", origin, target, headers, call.body, deadline=deadline)
            body = await resp.read()
        except ConnectError as exc:
            raise ConnectFailed(upstream, str(exc)) from exc
        except TimeoutError as exc:
            raise TimedOut(upstream, f"no answer within {self._request_timeout:g} s") from exc
        except ConnectionLost as exc:
            raise BadResponse(upstream, str(exc)) from exc
        finally:
            if resp is not None:
                resp.release()  # closes instead when the body was not read to its end
        if worker_trouble(resp.status):
            raise BadResponse(upstream, f"answered HTTP {resp.status}", status=resp.status)
        return UpstreamReply(resp.status, body, resp.content_type or _JSON)

    async def open_stream(self, upstream: Upstream, call: UpstreamCall) -> EventStream | UpstreamReply:
        origin, target = self._target(upstream, call.path)
        headers = self._headers(upstream, call, "text/event-stream")
        try:
            resp = await self._pool.request(
                "POST", origin, target, headers, call.body, read_timeout=self._idle_timeout
            )
        except ConnectError as exc:
            raise ConnectFailed(upstream, str(exc)) from exc
        except TimeoutError as exc:
            raise TimedOut(upstream, f"no response headers within {self._idle_timeout:g} s") from exc
        except ConnectionLost as exc:
            raise BadResponse(upstream, str(exc)) from exc
        if resp.status >= 400:
            try:
                body = await resp.read()
            except (ConnectionLost, TimeoutError) as exc:
                raise BadResponse(upstream, f"answered HTTP {resp.status}", status=resp.status) from exc
            finally:
                resp.release()
            if worker_trouble(resp.status):
                raise BadResponse(upstream, f"answered HTTP {resp.status}", status=resp.status)
            return UpstreamReply(resp.status, body, resp.content_type or _JSON)
        if resp.content_type != "text/event-stream":
            resp.close()
            raise BadResponse(
                upstream, f"answered {resp.content_type or 'no content type'!r} to a streaming request"
            )
        return _SSEStream(upstream, resp)

    async def list_models(self, upstream: Upstream) -> list[str]:
        origin, target = self._target(upstream, "models")
        headers = {"Accept": _JSON, **_auth(upstream)}
        resp: Response | None = None
        try:
            async with asyncio.timeout(10.0):
                resp = await self._pool.request("GET", origin, target, headers)
                raw = await resp.read()
        except ConnectError as exc:
            raise ConnectFailed(upstream, str(exc)) from exc
        except TimeoutError as exc:
            raise TimedOut(upstream, "GET /models timed out") from exc
        except ConnectionLost as exc:
            raise BadResponse(upstream, f"GET /models failed: {exc}") from exc
        finally:
            if resp is not None:
                resp.release()
        if resp.status != 200:
            raise BadResponse(upstream, f"GET /models answered HTTP {resp.status}", resp.status)
        try:
            return [str(m["id"]) for m in orjson.loads(raw)["data"]]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise BadResponse(upstream, "GET /models did not return an OpenAI model list") from exc

    async def close(self) -> None:
        await self._pool.close()


def _auth(upstream: Upstream) -> dict[str, str]:
    """The bearer key the upstream requires, if any."""
    return {"Authorization": f"Bearer {upstream.api_key}"} if upstream.api_key else {}


def upstream_request_id(request_id: str) -> str:
    """The request id as sent to the worker: itself if it is a UUID, else its UUIDv5.

    Some engines (llama.cpp's server) refuse an X-Request-ID that is not a UUID; the v5
    mapping (namespace URL) is deterministic, so a client's own id can still be traced.
    """
    if _HEX32.fullmatch(request_id):  # the gateway's own ids
        return request_id
    if len(request_id) == 36:
        try:
            canonical = str(uuid.UUID(request_id))
        except ValueError:
            pass
        else:
            if canonical == request_id.lower():
                return canonical
    return str(uuid.uuid5(uuid.NAMESPACE_URL, request_id))


class _SSEStream(EventStream):
    """SSE events read line by line; works for `\\n` (vLLM) and `\\r\\n` (sse-starlette) framing."""

    def __init__(self, upstream: Upstream, resp: Response) -> None:
        super().__init__(upstream)
        self._resp = resp

    async def __aiter__(self) -> AsyncIterator[bytes]:
        resp = self._resp
        framer = EventFramer()
        try:
            while line := await resp.readline():
                if (event := framer.line(line)) is not None:
                    yield event
            if (event := framer.end()) is not None:
                yield event
        except TimeoutError as exc:
            raise TimedOut(self.upstream, "the stream stalled past the idle time limit") from exc
        except ConnectionLost as exc:
            raise StreamBroken(self.upstream, str(exc)) from exc

    async def aclose(self) -> None:
        # Released for reuse when read to its end; otherwise closed, which is what tells the
        # engine to abort the request.
        self._resp.release()
