"""The relay seam: how a request reaches a worker, whatever the transport.

The dispatcher only speaks to `Relay`; `DirectRelay` (HTTP to the worker) is here now and the
Globus Compute relay plugs in beside it. A relay raises `RelayError` subclasses; whether an
error may be retried elsewhere is decided by `retryable`, and only before the first byte.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Upstream:
    """One OpenAI-compatible server a relay can reach (a worker, or a site proxy)."""

    name: str  # unique, e.g. "local/0"; used in metrics and usage records
    cluster: str
    base_url: str  # ends in /v1, no trailing slash
    api_key: str | None = None

    def __repr__(self) -> str:  # never print the key
        return f"Upstream({self.name!r}, {self.base_url!r})"


@dataclass(frozen=True, slots=True)
class UpstreamCall:
    path: str  # below /v1, e.g. "chat/completions"
    body: bytes
    request_id: str
    # The W3C trace context of the attempt (`gateway.tracing`), for the worker; None when off.
    traceparent: str | None = None
    tracestate: str | None = None


@dataclass(frozen=True, slots=True)
class UpstreamReply:
    status: int
    body: bytes
    content_type: str


def worker_trouble(status: int) -> bool:
    """Statuses that are the worker's (or the gateway's) problem, not the client's: 5xx, a full
    worker (429) and a refused gateway credential (401/403). Another worker may do better."""
    return status >= 500 or status in (401, 403, 429)


class RelayError(Exception):
    """An attempt at one upstream failed. `reason` is a short metric label."""

    reason = "error"
    retryable = True

    def __init__(self, upstream: Upstream, detail: str) -> None:
        super().__init__(f"{upstream.name}: {detail}")
        self.upstream = upstream
        self.detail = detail


class ConnectFailed(RelayError):
    reason = "connect"


class TimedOut(RelayError):
    reason = "timeout"


class BadResponse(RelayError):
    """The upstream answered 5xx, 429, 401 or 403, or something that is not HTTP/SSE as expected."""

    reason = "bad_response"

    def __init__(self, upstream: Upstream, detail: str, status: int | None = None) -> None:
        super().__init__(upstream, detail)
        self.status = status


class StreamBroken(RelayError):
    """The connection dropped or stalled while a stream was being read."""

    reason = "stream_broken"


class EventStream(abc.ABC):
    """An open SSE stream from an upstream: raw events, each ending in a blank line."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream

    @abc.abstractmethod
    def __aiter__(self) -> AsyncIterator[bytes]: ...

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Stop reading and release the connection (cancels the upstream request)."""


class Relay(abc.ABC):
    @abc.abstractmethod
    async def send(self, upstream: Upstream, call: UpstreamCall) -> UpstreamReply:
        """Send a non-streaming request. 4xx replies are returned; 5xx, 429, 401 and 403 (the
        gateway's credential refused) raise BadResponse: another worker may do better."""

    @abc.abstractmethod
    async def open_stream(self, upstream: Upstream, call: UpstreamCall) -> EventStream | UpstreamReply:
        """Open a streaming request. A 4xx reply is returned as is (no stream)."""

    @abc.abstractmethod
    async def list_models(self, upstream: Upstream) -> list[str]:
        """Model ids the upstream serves (GET /v1/models)."""

    @abc.abstractmethod
    async def close(self) -> None: ...
