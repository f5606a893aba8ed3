"""DirectRelay: HTTP/SSE passthrough from the gateway to an OpenAI-compatible worker.

One aiohttp ClientSession (one keep-alive HTTP/1.1 connection pool) serves every upstream.
aiohttp was chosen over httpx for this hot path after measuring both with
`python -m benchmarks.clients` (numbers in docs/performance.md).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import aiohttp
import orjson

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
)

_JSON = "application/json"


class DirectRelay(Relay):
    def __init__(
        self,
        *,
        connect_timeout_s: float = 5.0,
        request_timeout_s: float = 600.0,
        stream_idle_timeout_s: float = 120.0,
        max_connections: int = 1000,
    ) -> None:
        self._connect_timeout = connect_timeout_s
        self._unary_timeout = aiohttp.ClientTimeout(total=request_timeout_s, sock_connect=connect_timeout_s)
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout_s, sock_read=stream_idle_timeout_s
        )
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        # Created lazily so it binds to the running event loop.
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections,
                limit_per_host=0,
                keepalive_timeout=60,
                ttl_dns_cache=300,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                skip_auto_headers=("User-Agent",),
                json_serialize=lambda o: orjson.dumps(o).decode(),
            )
        return self._session

    @staticmethod
    def _headers(upstream: Upstream, call: UpstreamCall, accept: str) -> dict[str, str]:
        headers = {
            "Content-Type": _JSON,
            "Accept": accept,
            "X-Request-ID": upstream_request_id(call.request_id),
        }
        if upstream.api_key:
            headers["Authorization"] = f"Bearer {upstream.api_key}"
        return headers

    async def send(self, upstream: Upstream, call: UpstreamCall) -> UpstreamReply:
        url = f"{upstream.base_url}/{call.path}"
        try:
            async with self.session.post(
                url,
                data=call.body,
                headers=self._headers(upstream, call, _JSON),
                timeout=self._unary_timeout,
            ) as resp:
                body = await resp.read()
                reply = UpstreamReply(resp.status, body, resp.content_type or _JSON)
        except TimeoutError as exc:
            raise TimedOut(upstream, f"no answer within the time limit ({exc or 'timeout'})") from exc
        except aiohttp.ClientConnectorError as exc:
            raise ConnectFailed(upstream, f"cannot connect to {upstream.base_url}: {exc.os_error}") from exc
        except aiohttp.ClientError as exc:
            raise BadResponse(upstream, f"connection failed: {type(exc).__name__}") from exc
        if reply.status >= 500 or reply.status == 429:
            raise BadResponse(upstream, f"answered HTTP {reply.status}", status=reply.status)
        return reply

    async def open_stream(self, upstream: Upstream, call: UpstreamCall) -> EventStream | UpstreamReply:
        url = f"{upstream.base_url}/{call.path}"
        try:
            resp = await self.session.post(
                url,
                data=call.body,
                headers=self._headers(upstream, call, "text/event-stream"),
                timeout=self._stream_timeout,
            )
        except TimeoutError as exc:
            raise TimedOut(upstream, "no response headers within the time limit") from exc
        except aiohttp.ClientConnectorError as exc:
            raise ConnectFailed(upstream, f"cannot connect to {upstream.base_url}: {exc.os_error}") from exc
        except aiohttp.ClientError as exc:
            raise BadResponse(upstream, f"connection failed: {type(exc).__name__}") from exc
        if resp.status >= 400:
            try:
                body = await resp.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                resp.close()
                raise BadResponse(upstream, f"answered HTTP {resp.status}", status=resp.status) from exc
            resp.release()
            if resp.status >= 500 or resp.status == 429:
                raise BadResponse(upstream, f"answered HTTP {resp.status}", status=resp.status)
            return UpstreamReply(resp.status, body, resp.content_type or _JSON)
        if resp.content_type != "text/event-stream":
            resp.close()
            raise BadResponse(upstream, f"answered {resp.content_type!r} to a streaming request")
        return _AiohttpEventStream(upstream, resp)

    async def list_models(self, upstream: Upstream) -> list[str]:
        headers = {"Authorization": f"Bearer {upstream.api_key}"} if upstream.api_key else {}
        timeout = aiohttp.ClientTimeout(total=max(self._connect_timeout, 10.0))
        try:
            async with self.session.get(
                f"{upstream.base_url}/models", headers=headers, timeout=timeout
            ) as resp:
                if resp.status != 200:
                    raise BadResponse(upstream, f"GET /models answered HTTP {resp.status}", resp.status)
                data = orjson.loads(await resp.read())
        except TimeoutError as exc:
            raise TimedOut(upstream, "GET /models timed out") from exc
        except aiohttp.ClientConnectorError as exc:
            raise ConnectFailed(upstream, f"cannot connect to {upstream.base_url}: {exc.os_error}") from exc
        except (aiohttp.ClientError, orjson.JSONDecodeError) as exc:
            raise BadResponse(upstream, f"GET /models failed: {type(exc).__name__}") from exc
        try:
            return [str(m["id"]) for m in data["data"]]
        except (KeyError, TypeError) as exc:
            raise BadResponse(upstream, "GET /models did not return an OpenAI model list") from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def upstream_request_id(request_id: str) -> str:
    """The request id as sent to the worker: itself if it is a UUID, else its UUIDv5.

    Some engines (llama.cpp's server) refuse an X-Request-ID that is not a UUID; the v5
    mapping (namespace URL) is deterministic, so a client's own id can still be traced.
    """
    if len(request_id) in (32, 36):
        try:
            uuid.UUID(request_id)
            return request_id
        except ValueError:
            pass
    return str(uuid.uuid5(uuid.NAMESPACE_URL, request_id))


class _AiohttpEventStream(EventStream):
    """SSE events read line by line; works for `\\n` (vLLM) and `\\r\\n` (sse-starlette) framing."""

    def __init__(self, upstream: Upstream, resp: aiohttp.ClientResponse) -> None:
        super().__init__(upstream)
        self._resp = resp
        self._finished = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        content = self._resp.content
        lines: list[bytes] = []
        try:
            while True:
                line = await content.readline()
                if not line:  # EOF
                    if lines:
                        yield b"\n".join(lines) + b"\n\n"
                    self._finished = True
                    return
                line = line.rstrip(b"\r\n")
                if line:
                    lines.append(line)
                elif lines:
                    yield b"\n".join(lines) + b"\n\n"
                    lines = []
        except TimeoutError as exc:
            raise TimedOut(self.upstream, "the stream stalled past the idle time limit") from exc
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise StreamBroken(self.upstream, f"the stream broke: {type(exc).__name__}") from exc

    async def aclose(self) -> None:
        if self._finished:
            self._resp.release()
        else:
            # Closing the connection is what tells the engine to abort the request.
            self._resp.close()
        await asyncio.sleep(0)
