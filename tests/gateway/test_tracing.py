"""Tracing: the server span continues the client's trace, each upstream attempt is a child
span, and the attempt's trace context reaches the worker (HTTP headers from the direct relay,
the task payload of the compute relay, headers again from the site function). Spans are
collected in memory; the relay, the app and the upstream are real (loopback)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import ValidationError

from endpoints.functions import infer
from endpoints.protocol import FUNCTIONS_VERSION, MAX_PAYLOAD_BYTES, InferRequest
from gateway.app import create_app
from gateway.auth.principal import Principal
from gateway.config import TracingSettings, load_settings
from gateway.errors import RequestTooLarge
from gateway.metrics import GatewayMetrics
from gateway.relay.base import Upstream, UpstreamCall
from gateway.relay.bridge import LocalStreamBridge
from gateway.relay.compute import ComputeRelay
from gateway.relay.direct import DirectRelay
from gateway.relay.dispatch import CallContext, Dispatcher
from gateway.relay.stream import ClientStream
from gateway.routing.catalogue import Catalogue, UpstreamSource
from gateway.routing.router import Router
from gateway.tracing import Tracing, build_tracing
from tests.gateway.recording import RecordingUpstream, json_reply
from tests.support.procs import free_port

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
CLIENT_TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
KEY = "sk-tracing-test"
STREAM = (
    b'data: {"choices":[{"index":0,"delta":{"content":"a"}}],"usage":null}\n\n'
    b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}\n\n'
    b"data: [DONE]\n\n"
)


def in_memory() -> tuple[Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(provider), exporter


def parse_traceparent(value: str) -> tuple[str, str, str]:
    """(trace id, parent span id, flags) of a W3C traceparent header."""
    version, trace_id, span_id, flags = value.split("-")
    assert version == "00"
    return trace_id, span_id, flags


def sampled(flags: str) -> bool:
    return bool(int(flags, 16) & 0x01)  # W3C trace-flags: bit 0 is "sampled"


def ids(span: ReadableSpan) -> tuple[str, str]:
    ctx = span.get_span_context()
    assert ctx is not None
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"


def parent_id(span: ReadableSpan) -> str | None:
    return f"{span.parent.span_id:016x}" if span.parent else None


def attrs(span: ReadableSpan) -> Mapping[str, Any]:
    return span.attributes or {}


def dispatcher(relay: DirectRelay, *upstreams: Upstream, tracing: Tracing | None) -> Dispatcher:
    sources = [UpstreamSource(u, ("m",)) for u in upstreams]
    return Dispatcher(
        Router(Catalogue(sources, relay), cooldown_s=60), relay, GatewayMetrics(), None, tracing=tracing
    )


def ctx() -> CallContext:
    return CallContext(
        Principal(user="alice"), "r-1", "chat.completions", "chat/completions", time.perf_counter()
    )


def http_scope(headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": headers}


# ---------------------------------------------------------------- settings


def test_off_by_default_and_settings_are_checked() -> None:
    assert build_tracing(TracingSettings()) is None
    assert load_settings(None).tracing == TracingSettings()
    for bad in ({"sample_ratio": 1.5}, {"sample_ratio": -0.1}, {"otlp_endpoint": "collector:4318"}):
        with pytest.raises(ValidationError):
            TracingSettings(**bad)
    on = build_tracing(TracingSettings(enabled=True, otlp_endpoint="http://127.0.0.1:9/v1/traces"))
    assert isinstance(on, Tracing)
    on.provider.shutdown()


async def test_without_tracing_the_worker_gets_no_trace_context(
    relay: DirectRelay, up: RecordingUpstream
) -> None:
    await dispatcher(relay, up.upstream(), tracing=None).unary(ctx(), dict(CHAT))
    assert "traceparent" not in up.seen[-1].headers
    assert "tracestate" not in up.seen[-1].headers


def test_console_writes_spans_to_the_log(caplog: pytest.LogCaptureFixture) -> None:
    tracing = build_tracing(TracingSettings(enabled=True, console=True))
    assert tracing is not None
    with caplog.at_level(logging.INFO, logger="gateway.tracing"):
        span, _, _ = tracing.attempt_span("upstream chat.completions", {"hearth.model": "m"})
        Tracing.end_attempt(span, 200)
        tracing.shutdown()
    (record,) = [r for r in caplog.records if r.name == "gateway.tracing" and r.msg == "span"]
    assert record.span == "upstream chat.completions"  # type: ignore[attr-defined]
    assert record.attributes == {"hearth.model": "m", "http.response.status_code": 200}  # type: ignore[attr-defined]
    assert len(record.trace_id) == 32  # type: ignore[attr-defined]


# ---------------------------------------------------------------- the direct relay


async def test_client_trace_continues_to_the_worker(relay: DirectRelay, up: RecordingUpstream) -> None:
    tracing, spans = in_memory()
    up.reply = json_reply({"usage": {"prompt_tokens": 4, "completion_tokens": 2}})
    server = tracing.server_span(http_scope([(b"traceparent", CLIENT_TRACEPARENT.encode())]), "r-1")
    await dispatcher(relay, up.upstream(), tracing=tracing).unary(ctx(), dict(CHAT))
    server.end(200)
    attempt, request = spans.get_finished_spans()
    assert ids(request)[0] == ids(attempt)[0] == CLIENT_TRACE
    assert parent_id(request) == CLIENT_SPAN
    assert parent_id(attempt) == ids(request)[1]
    assert (request.kind, attempt.kind) == (SpanKind.SERVER, SpanKind.CLIENT)
    assert request.name == "POST /v1/chat/completions"
    assert attrs(request)["http.response.status_code"] == 200
    assert attrs(request)["hearth.request_id"] == "r-1"
    assert attrs(attempt) == {
        "hearth.model": "m", "hearth.cluster": "c", "hearth.upstream": "rec", "hearth.attempt": 1,
        "hearth.request_id": "r-1", "gen_ai.request.model": "m", "http.response.status_code": 200,
        "gen_ai.usage.input_tokens": 4, "gen_ai.usage.output_tokens": 2,
    }  # fmt: skip
    # The worker continues the attempt's span (vLLM makes its own spans children of it).
    assert parse_traceparent(up.seen[-1].headers["traceparent"]) == (CLIENT_TRACE, ids(attempt)[1], "01")


async def test_each_failover_attempt_is_a_span(relay: DirectRelay, up: RecordingUpstream) -> None:
    tracing, spans = in_memory()
    dead = Upstream(name="dead", cluster="c", base_url=f"http://127.0.0.1:{free_port()}/v1")
    up.reply = json_reply({"ok": True})
    d = dispatcher(relay, dead, up.upstream(), tracing=tracing)
    for _ in range(2):  # the router rotates between the two; one of the requests tries `dead` first
        server = tracing.server_span(http_scope([]), "r-1")
        await d.unary(ctx(), dict(CHAT))
        server.end(200)
    attempts = [s for s in spans.get_finished_spans() if s.kind is SpanKind.CLIENT]
    failed = [s for s in attempts if attrs(s)["hearth.upstream"] == "dead"]
    assert len(failed) == 1
    (fail,) = failed
    assert attrs(fail)["hearth.failover_reason"] == "connect"
    assert fail.status.status_code is StatusCode.ERROR
    assert "http.response.status_code" not in attrs(fail)
    (retry,) = [s for s in attempts if ids(s)[0] == ids(fail)[0] and s is not fail]
    assert parent_id(retry) == parent_id(fail)  # both beneath the request's span
    assert attrs(retry)["hearth.attempt"] == 2
    assert attrs(retry)["http.response.status_code"] == 200
    # Only attempts that reached a worker carried a trace context there, each its own span.
    sent = {parse_traceparent(s.headers["traceparent"])[1] for s in up.seen}
    assert sent == {ids(s)[1] for s in attempts if attrs(s)["hearth.upstream"] == "rec"}


async def test_stream_attempt_span_lasts_until_the_stream_ends(
    relay: DirectRelay, up: RecordingUpstream
) -> None:
    tracing, spans = in_memory()
    up.reply = up.sse_reply(STREAM)
    opened = await dispatcher(relay, up.upstream(), tracing=tracing).stream(ctx(), {**CHAT, "stream": True})
    assert isinstance(opened, ClientStream)
    assert spans.get_finished_spans() == ()  # open while the stream is
    assert [e async for e in opened][-1] == b"data: [DONE]\n\n"
    (attempt,) = spans.get_finished_spans()
    assert attrs(attempt)["http.response.status_code"] == 200
    assert attrs(attempt)["gen_ai.usage.output_tokens"] == 1
    assert parse_traceparent(up.seen[-1].headers["traceparent"])[1] == ids(attempt)[1]


async def test_unsampled_client_trace_is_passed_on_not_recorded(
    relay: DirectRelay, up: RecordingUpstream
) -> None:
    tracing, spans = in_memory()
    unsampled = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-00"
    server = tracing.server_span(http_scope([(b"traceparent", unsampled.encode())]), "r-1")
    await dispatcher(relay, up.upstream(), tracing=tracing).unary(ctx(), dict(CHAT))
    server.end(200)
    assert spans.get_finished_spans() == ()
    trace_id, _, flags = parse_traceparent(up.seen[-1].headers["traceparent"])
    assert (trace_id, sampled(flags)) == (CLIENT_TRACE, False)


# ---------------------------------------------------------------- the compute relay and the site


class _RecordingTransport:
    def __init__(self) -> None:
        self.payloads: list[dict[str, Any]] = []

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def call(self, function: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        self.payloads.append(dict(payload))
        return {
            "version": FUNCTIONS_VERSION,
            "status": 200,
            "body": b"{}",
            "content_type": "application/json",
        }


async def test_compute_task_payload_carries_the_trace_context() -> None:
    transport = _RecordingTransport()
    relay = ComputeRelay(transport, LocalStreamBridge(), "http://127.0.0.1:1")
    site = Upstream(name="s/0", cluster="s", base_url="http://127.0.0.1:1/v1")
    traceparent = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
    await relay.send(site, UpstreamCall("chat/completions", b"{}", "r-1", traceparent, "vendor=x"))
    await relay.send(site, UpstreamCall("chat/completions", b"{}", "r-2"))
    traced, plain = transport.payloads
    assert (traced["traceparent"], traced["tracestate"]) == (traceparent, "vendor=x")
    assert "traceparent" not in plain
    assert "tracestate" not in plain


async def test_an_error_that_ends_the_request_ends_its_attempt_span() -> None:
    tracing, spans = in_memory()
    relay = ComputeRelay(_RecordingTransport(), LocalStreamBridge(), "http://127.0.0.1:1")
    site = Upstream(name="s/0", cluster="s", base_url="http://127.0.0.1:1/v1")
    router = Router(Catalogue([UpstreamSource(site, ("m",))], relay))
    d = Dispatcher(router, relay, GatewayMetrics(), None, tracing=tracing)
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * MAX_PAYLOAD_BYTES}]}
    with pytest.raises(RequestTooLarge):
        await d.unary(ctx(), big)
    (attempt,) = spans.get_finished_spans()
    assert attempt.status.status_code is StatusCode.ERROR
    assert "RequestTooLarge" in (attempt.status.description or "")
    assert "hearth.failover_reason" not in attrs(attempt)


async def test_site_function_sends_the_trace_context_to_the_engine(up: RecordingUpstream) -> None:
    req: InferRequest = {
        "version": FUNCTIONS_VERSION, "worker": {"base_url": up.url, "api_key": None},
        "path": "chat/completions", "body": b"{}", "request_id": "r-1", "timeout_s": 5.0,
    }  # fmt: skip
    assert (await asyncio.to_thread(infer, req))["status"] == 200
    assert "traceparent" not in up.seen[-1].headers
    req["traceparent"] = CLIENT_TRACEPARENT
    req["tracestate"] = "vendor=x"
    assert (await asyncio.to_thread(infer, req))["status"] == 200
    assert up.seen[-1].headers["traceparent"] == CLIENT_TRACEPARENT
    assert up.seen[-1].headers["tracestate"] == "vendor=x"


# ---------------------------------------------------------------- the app (middleware, fast lane)


@asynccontextmanager
async def serve(
    store: Path, up: RecordingUpstream, tracing: dict[str, Any]
) -> AsyncIterator[tuple[httpx.AsyncClient, InMemorySpanExporter]]:
    settings = load_settings(
        None,
        server={"access_log": False},
        store={"url": f"sqlite:///{store / 'hearth.db'}"},
        auth={"api_keys": [{"owner": "tester", "key": KEY}]},
        clusters={"c": {"upstreams": [{"url": up.url, "models": ["m"]}]}},
        tracing=tracing,
    )
    app = create_app(settings)
    exporter = InMemorySpanExporter()
    traced = app.state.services.tracing
    if traced is not None:
        traced.provider.add_span_processor(SimpleSpanProcessor(exporter))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("uvicorn exited before it started")
        await asyncio.sleep(0.01)
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {KEY}"}, timeout=10
        ) as client:
            yield client, exporter
    finally:
        server.should_exit = True
        await task


async def test_app_traces_inference_requests_only(tmp_path: Path, up: RecordingUpstream) -> None:
    up.reply = json_reply({"ok": True})
    async with serve(tmp_path, up, {"enabled": True}) as (client, spans):
        reply = await client.post(
            "/v1/chat/completions", content=orjson.dumps(CHAT), headers={"traceparent": CLIENT_TRACEPARENT}
        )
        assert reply.status_code == 200
        assert (await client.get("/v1/models")).status_code == 200
        missing = await client.post("/v1/chat/completions", content=orjson.dumps({**CHAT, "model": "nope"}))
        assert missing.status_code == 404
    attempt, request, refused = spans.get_finished_spans()
    assert request.name == refused.name == "POST /v1/chat/completions"
    assert parent_id(request) == CLIENT_SPAN
    assert parent_id(attempt) == ids(request)[1]
    assert attrs(request)["http.response.status_code"] == 200
    assert attrs(request)["hearth.request_id"] == reply.headers["x-request-id"]
    assert parse_traceparent(up.seen[-1].headers["traceparent"]) == (CLIENT_TRACE, ids(attempt)[1], "01")
    # A request without a traceparent starts a trace of its own.
    assert parent_id(refused) is None
    assert ids(refused)[0] != CLIENT_TRACE
    assert attrs(refused)["http.response.status_code"] == 404
    assert refused.status.status_code is StatusCode.UNSET  # a 4xx is the client's, not an error


async def test_app_sample_ratio_zero_records_nothing_but_passes_context(
    tmp_path: Path, up: RecordingUpstream
) -> None:
    up.reply = json_reply({"ok": True})
    async with serve(tmp_path, up, {"enabled": True, "sample_ratio": 0.0}) as (client, spans):
        assert (await client.post("/v1/chat/completions", content=orjson.dumps(CHAT))).status_code == 200
    assert spans.get_finished_spans() == ()
    _, _, flags = parse_traceparent(up.seen[-1].headers["traceparent"])
    assert not sampled(flags)
