"""DirectRelay against a real HTTP upstream on loopback: what the worker receives, how its
failures are classified, and how SSE is framed into events."""

from __future__ import annotations

import asyncio
import time
import uuid

import orjson
import pytest

from gateway.relay.base import (
    BadResponse,
    ConnectFailed,
    EventStream,
    RelayError,
    TimedOut,
    Upstream,
    UpstreamCall,
    UpstreamReply,
)
from gateway.relay.direct import DirectRelay, upstream_request_id
from tests.gateway.recording import RecordingUpstream, Reply, json_reply, raw_reply
from tests.gateway.relay.conftest import IDLE_TIMEOUT_S, REQUEST_TIMEOUT_S
from tests.support.procs import free_port

BODY = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
UUID4 = "0f8fad5b-d9cb-469f-a165-70867728950e"


def call(request_id: str = UUID4, body: bytes = BODY, path: str = "chat/completions") -> UpstreamCall:
    return UpstreamCall(path=path, body=body, request_id=request_id)


async def open_events(relay: DirectRelay, up: RecordingUpstream) -> list[bytes]:
    stream = await relay.open_stream(up.upstream(), call())
    assert isinstance(stream, EventStream)
    try:
        return [event async for event in stream]
    finally:
        await stream.aclose()


# --- what the worker receives -------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_id", "sent"),
    [
        (UUID4, UUID4),
        (uuid.UUID(UUID4).hex, uuid.UUID(UUID4).hex),  # the middleware's own ids are 32 hex
        ("client-id-1", str(uuid.uuid5(uuid.NAMESPACE_URL, "client-id-1"))),
        ("x" * 36, str(uuid.uuid5(uuid.NAMESPACE_URL, "x" * 36))),  # UUID length, not a UUID
        ("g" * 32, str(uuid.uuid5(uuid.NAMESPACE_URL, "g" * 32))),
    ],
)
async def test_send_headers_and_body(
    relay: DirectRelay, up: RecordingUpstream, request_id: str, sent: str
) -> None:
    up.reply = json_reply({"id": "cmpl-1"})
    reply = await relay.send(up.upstream(api_key="worker-secret"), call(request_id))

    assert reply == UpstreamReply(200, b'{"id":"cmpl-1"}', "application/json")
    (seen,) = up.seen
    assert (seen.method, seen.path, seen.body) == ("POST", "/v1/chat/completions", BODY)
    assert seen.headers["X-Request-ID"] == sent
    assert seen.headers["Authorization"] == "Bearer worker-secret"
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.headers["Accept"] == "application/json"


def test_upstream_request_id_is_deterministic_and_a_uuid() -> None:
    mapped = upstream_request_id("my trace id")
    assert mapped == upstream_request_id("my trace id") != upstream_request_id("my trace id 2")
    assert uuid.UUID(mapped).version == 5


async def test_no_authorization_without_an_upstream_key(relay: DirectRelay, up: RecordingUpstream) -> None:
    await relay.send(up.upstream(api_key=None), call())
    up.reply = up.sse_reply(b"data: [DONE]\n\n")
    stream = await relay.open_stream(up.upstream(api_key=None), call())
    assert isinstance(stream, EventStream)
    await stream.aclose()
    assert len(up.seen) == 2
    assert all("Authorization" not in s.headers for s in up.seen)


async def test_stream_request_headers(relay: DirectRelay, up: RecordingUpstream) -> None:
    up.reply = up.sse_reply(b"data: [DONE]\n\n")
    await open_events(relay, up)
    (seen,) = up.seen
    assert seen.headers["Accept"] == "text/event-stream"
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.headers["Authorization"] == "Bearer up-key"
    assert seen.headers["X-Request-ID"] == UUID4
    assert seen.body == BODY


# --- failures -----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 404, 413, 422])
async def test_4xx_is_returned_not_raised(relay: DirectRelay, up: RecordingUpstream, status: int) -> None:
    """The request's own fault: the client should see the worker's answer."""
    up.reply = json_reply({"error": {"message": "no"}}, status=status)
    reply = await relay.send(up.upstream(), call())
    assert reply.status == status
    assert orjson.loads(reply.body) == {"error": {"message": "no"}}

    opened = await relay.open_stream(up.upstream(), call())
    assert isinstance(opened, UpstreamReply)
    assert opened.status == status


@pytest.mark.parametrize("status", [401, 403, 429, 500, 502, 503])
async def test_retryable_statuses_raise_bad_response(
    relay: DirectRelay, up: RecordingUpstream, status: int
) -> None:
    """Overload, worker failure, or the gateway's own credential refused: another worker may
    do better."""
    up.reply = json_reply({"error": {"message": "busy"}}, status=status)
    for attempt in (relay.send, relay.open_stream):
        with pytest.raises(BadResponse) as info:
            await attempt(up.upstream(), call())
        assert info.value.status == status
        assert info.value.retryable
        assert info.value.upstream.name == "rec"


async def test_connection_refused_is_connect_failed(relay: DirectRelay) -> None:
    dead = Upstream("dead", "c", f"http://127.0.0.1:{free_port()}/v1")
    for attempt in (relay.send, relay.open_stream):
        with pytest.raises(ConnectFailed):
            await attempt(dead, call())
    with pytest.raises(ConnectFailed):
        await relay.list_models(dead)


async def test_slow_answer_is_timed_out(relay: DirectRelay, up: RecordingUpstream) -> None:
    up.reply = up.slow_reply(5)
    started = time.perf_counter()
    with pytest.raises(TimedOut):
        await relay.send(up.upstream(), call())
    assert time.perf_counter() - started < REQUEST_TIMEOUT_S + 1.0


async def test_slow_stream_headers_are_timed_out(relay: DirectRelay, up: RecordingUpstream) -> None:
    up.reply = up.slow_reply(5)
    with pytest.raises(TimedOut):
        await relay.open_stream(up.upstream(), call())


async def test_stalled_stream_is_timed_out(relay: DirectRelay, up: RecordingUpstream) -> None:
    up.reply = up.sse_reply(b'data: {"n":1}\n\n', b'data: {"n":2}\n\n', delay_s=5)
    stream = await relay.open_stream(up.upstream(), call())
    assert isinstance(stream, EventStream)
    events = aiter(stream)
    assert await anext(events) == b'data: {"n":1}\n\n'
    started = time.perf_counter()
    with pytest.raises(TimedOut):
        await anext(events)
    assert time.perf_counter() - started < IDLE_TIMEOUT_S + 1.0
    await stream.aclose()


@pytest.mark.parametrize("content_type", ["application/json", "text/plain", "application/x-ndjson"])
async def test_stream_answered_without_sse_is_bad_response(
    relay: DirectRelay, up: RecordingUpstream, content_type: str
) -> None:
    up.reply = raw_reply(b'{"choices":[]}', content_type)
    with pytest.raises(BadResponse) as info:
        await relay.open_stream(up.upstream(), call())
    assert content_type in info.value.detail


# --- SSE framing --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parts", "events"),
    [
        pytest.param(
            [b'data: {"a":1}\n\n', b'data: {"a":2}\n\ndata: [DONE]\n\n'],
            [b'data: {"a":1}\n\n', b'data: {"a":2}\n\n', b"data: [DONE]\n\n"],
            id="lf",
        ),
        pytest.param(
            [b'data: {"a":1}\r\n\r\n', b"data: [DONE]\r\n\r\n"],
            [b'data: {"a":1}\n\n', b"data: [DONE]\n\n"],
            id="crlf",
        ),
        pytest.param(
            [b"data: line one\ndata: line two\n\n", b"data: a\r\ndata: b\r\n\r\n"],
            [b"data: line one\ndata: line two\n\n", b"data: a\ndata: b\n\n"],
            id="multi-line",
        ),
        pytest.param(
            [b"da", b'ta: {"a"', b":1}\r", b"\n", b"\r\n: ping\n", b"\ndata: [DO", b"NE]\n\n"],
            [b'data: {"a":1}\n\n', b": ping\n\n", b"data: [DONE]\n\n"],
            id="split-across-writes",
        ),
        pytest.param(
            [b"\n\n\ndata: x\n\n\n\n", b"data: last"],
            [b"data: x\n\n", b"data: last\n\n"],
            id="extra-blank-lines-and-no-final-blank-line",
        ),
    ],
)
async def test_sse_events(
    relay: DirectRelay, up: RecordingUpstream, parts: list[bytes], events: list[bytes]
) -> None:
    up.reply = up.sse_reply(*parts)
    assert await open_events(relay, up) == events


async def test_sse_content_type_with_parameters(relay: DirectRelay, up: RecordingUpstream) -> None:
    up.reply = up.sse_reply(b"data: [DONE]\n\n", content_type="text/event-stream; charset=utf-8")
    assert await open_events(relay, up) == [b"data: [DONE]\n\n"]


async def test_long_sse_line_is_relayed(relay: DirectRelay, up: RecordingUpstream) -> None:
    content = "x" * 1_000_000  # e.g. an engine that sends a whole long answer in one event
    big = b"data: " + orjson.dumps({"choices": [{"delta": {"content": content}}]}) + b"\n\n"
    up.reply = up.sse_reply(big, b"data: [DONE]\n\n")
    assert await open_events(relay, up) == [big, b"data: [DONE]\n\n"]


async def test_line_over_any_limit_is_a_relay_error(relay: DirectRelay, up: RecordingUpstream) -> None:
    """Whatever the line limit, overflowing it must surface as a RelayError (so the stream
    ends with an error event and [DONE]), never as a foreign exception."""
    up.reply = up.sse_reply(b"data: " + b"x" * 4_000_000 + b"\n\n", b"data: [DONE]\n\n")
    try:
        events = await open_events(relay, up)
    except RelayError:
        return
    assert len(events) == 2


async def test_aclose_mid_stream_drops_the_connection(relay: DirectRelay, up: RecordingUpstream) -> None:
    """Closing the stream early is what tells the engine to abort the request."""
    up.reply = up.sse_reply(*[b'data: {"n":1}\n\n'] * 200, delay_s=0.01)
    stream = await relay.open_stream(up.upstream(), call())
    assert isinstance(stream, EventStream)
    events = aiter(stream)
    await anext(events)
    await stream.aclose()
    deadline = time.monotonic() + 2
    while not up.disconnects and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert up.disconnects == 1


# --- model discovery ----------------------------------------------------------------------


async def test_list_models(relay: DirectRelay, up: RecordingUpstream) -> None:
    up.reply = json_reply({"object": "list", "data": [{"id": "a", "object": "model"}, {"id": "b"}]})
    assert await relay.list_models(up.upstream()) == ["a", "b"]
    (seen,) = up.seen
    assert (seen.method, seen.path) == ("GET", "/v1/models")
    assert seen.headers["Authorization"] == "Bearer up-key"


@pytest.mark.parametrize(
    "reply",
    [
        json_reply({"error": "down"}, status=500),
        json_reply({"error": "no"}, status=401),
        raw_reply(b"<html>not json</html>", "text/html"),
        json_reply({"data": None}),
        json_reply({"data": ["a", "b"]}),
        json_reply([{"id": "a"}]),
        json_reply({"models": []}),
    ],
    ids=["500", "401", "html", "null-data", "bare-ids", "list", "no-data"],
)
async def test_list_models_rejects_bad_answers(
    relay: DirectRelay, up: RecordingUpstream, reply: Reply
) -> None:
    up.reply = reply
    with pytest.raises(BadResponse):
        await relay.list_models(up.upstream())
