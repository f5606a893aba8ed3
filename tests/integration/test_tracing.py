"""Tracing end to end: a real gateway (`hearth serve`) with tracing on exports its spans over
OTLP/HTTP to a collector stand-in on loopback (a small HTTP server that decodes the protobuf
with opentelemetry-proto), and the sim engines behind it receive the trace context: straight
from the direct relay, and through Globus Compute's engine and the site function."""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanProto

from tests.support.gateway import Gateway, Sim, start_gateway, start_sim, upstream, wait_for

CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: int
    attributes: dict[str, Any]
    error: bool


def _value(v: AnyValue) -> Any:
    return getattr(v, v.WhichOneof("value") or "string_value")


class Collector:
    """An OTLP/HTTP traces receiver (https://opentelemetry.io/docs/specs/otlp/#otlphttp):
    POST /v1/traces with a protobuf ExportTraceServiceRequest, answered with an empty
    ExportTraceServiceResponse."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.content_types: set[str] = set()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                collector.content_types.add(self.headers.get("Content-Type", ""))
                collector.receive(ExportTraceServiceRequest.FromString(body))
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1/traces"

    def receive(self, request: ExportTraceServiceRequest) -> None:
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    self.spans.append(
                        ReceivedSpan(
                            service=resource.get("service.name", ""),
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_id=s.parent_span_id.hex(),
                            name=s.name,
                            kind=s.kind,
                            attributes={a.key: _value(a.value) for a in s.attributes},
                            error=s.status.code == s.status.STATUS_CODE_ERROR,
                        )
                    )

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.trace_id == trace_id]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.close()


@pytest.fixture(scope="module")
def engines(logs: Path) -> Iterator[tuple[Sim, Sim]]:
    direct, site = start_sim(logs, model="near-model", itl_ms=2), start_sim(logs, model="far-model", itl_ms=2)
    yield direct, site
    direct.proc.stop()
    site.proc.stop()


@pytest.fixture(scope="module")
def gw(
    logs: Path, engines: tuple[Sim, Sim], collector: Collector, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("tracing")
    direct, site = engines
    clusters = {
        "near": {"upstreams": [upstream(direct, "w0", models=["near-model"])]},
        "far": {
            "relay": "compute",
            "compute": {"mode": "local", "provider": "local", "max_workers": 2, "run_dir": str(tmp / "run")},
            "upstreams": [upstream(site, "w0", models=["far-model"])],
        },
    }
    g = start_gateway(
        logs, clusters=clusters, store_url=f"sqlite:///{tmp}/h.db",
        tracing={"enabled": True, "otlp_endpoint": collector.url, "service_name": "hearth-under-test"},
        env={"OTEL_BSP_SCHEDULE_DELAY": "50"},  # export within 50 ms, not the default 5 s
    )  # fmt: skip
    yield g
    g.stop()


def traceparents(sim: Sim) -> list[str]:
    found: list[str] = httpx.get(f"{sim.root}/debug/traces").json()["traceparents"]
    return found


def engine_got(sim: Sim, trace_id: str) -> list[tuple[str, bool]]:
    """(parent span id, sampled) of each traceparent of `trace_id` the engine received."""
    out = []
    for p in traceparents(sim):
        _, trace, parent, flags = p.split("-")
        if trace == trace_id:
            out.append((parent, bool(int(flags, 16) & 0x01)))  # W3C trace-flags bit 0: sampled
    return out


def wait_for_trace(collector: Collector, trace_id: str, spans: int) -> list[ReceivedSpan]:
    assert wait_for(lambda: len(collector.trace(trace_id)) >= spans, 15), collector.trace(trace_id)
    time.sleep(0.2)  # nothing more should come
    return collector.trace(trace_id)


def test_client_trace_through_the_direct_relay(
    gw: Gateway, engines: tuple[Sim, Sim], collector: Collector
) -> None:
    direct, _ = engines
    client = gw.client(default_headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"})
    chunks = list(
        client.chat.completions.create(
            model="near-model", messages=[{"role": "user", "content": "hi"}], max_tokens=3, stream=True
        )
    )
    assert chunks
    request, attempt = sorted(wait_for_trace(collector, CLIENT_TRACE, 2), key=lambda s: s.kind)
    assert request.service == attempt.service == "hearth-under-test"
    assert (request.kind, attempt.kind) == (SpanProto.SPAN_KIND_SERVER, SpanProto.SPAN_KIND_CLIENT)
    assert request.name == "POST /v1/chat/completions"
    assert request.parent_id == CLIENT_SPAN
    assert request.attributes["http.response.status_code"] == 200
    assert attempt.parent_id == request.span_id
    assert {k: attempt.attributes[k] for k in ("hearth.model", "hearth.cluster", "hearth.upstream")} == {
        "hearth.model": "near-model",
        "hearth.cluster": "near",
        "hearth.upstream": "near/w0",
    }
    assert attempt.attributes["http.response.status_code"] == 200
    assert attempt.attributes["gen_ai.usage.output_tokens"] == 3
    assert collector.content_types == {"application/x-protobuf"}
    # The engine was handed the attempt's span as the parent of whatever it traces.
    assert engine_got(direct, CLIENT_TRACE) == [(attempt.span_id, True)]


def test_trace_context_through_globus_compute(
    gw: Gateway, engines: tuple[Sim, Sim], collector: Collector
) -> None:
    _, site = engines
    reply = gw.client().chat.completions.create(
        model="far-model", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert reply.choices[0].message.content
    # No traceparent from the client: the gateway started a trace of its own.
    assert wait_for(lambda: any(s.attributes.get("hearth.cluster") == "far" for s in collector.spans), 15)
    attempt = next(s for s in collector.spans if s.attributes.get("hearth.cluster") == "far")
    spans = wait_for_trace(collector, attempt.trace_id, 2)
    (request,) = [s for s in spans if s is not attempt]
    assert request.parent_id == ""
    assert attempt.parent_id == request.span_id
    assert attempt.attributes["hearth.upstream"] == "far/w0"
    # Payload → site function → header: the engine at the site continues the same trace.
    assert engine_got(site, attempt.trace_id) == [(attempt.span_id, True)]


def test_failover_attempt_is_a_span_with_its_reason(
    logs: Path, engines: tuple[Sim, Sim], collector: Collector, tmp_path: Path
) -> None:
    direct, _ = engines
    dead = {"url": "http://127.0.0.1:9/v1", "name": "dead", "models": ["near-model"]}
    g = start_gateway(
        logs, clusters={"near": {"upstreams": [dead, upstream(direct, "w0", models=["near-model"])]}},
        store_url=f"sqlite:///{tmp_path}/h.db", tracing={"enabled": True, "otlp_endpoint": collector.url},
        env={"OTEL_BSP_SCHEDULE_DELAY": "50"}, relay={"prefix_affinity": False},  # let ties alternate
    )  # fmt: skip
    trace_id = "5b8efff798038103d269b633813fc60c"
    try:
        client = g.client(default_headers={"traceparent": f"00-{trace_id}-{CLIENT_SPAN}-01"})
        for _ in range(2):  # one of the two tries `dead` first (the router alternates)
            client.completions.create(model="near-model", prompt="x", max_tokens=1)
        spans = wait_for_trace(collector, trace_id, 5)
    finally:
        g.stop()
    failed = [s for s in spans if s.attributes.get("hearth.upstream") == "near/dead"]
    assert len(failed) == 1
    assert failed[0].error
    assert failed[0].attributes["hearth.failover_reason"] == "connect"
    assert failed[0].attributes["hearth.attempt"] == 1
    (retry,) = [s for s in spans if s.parent_id == failed[0].parent_id and s is not failed[0]]
    assert retry.attributes["hearth.attempt"] == 2
    assert retry.attributes["hearth.upstream"] == "near/w0"


def test_metrics_cover_the_new_series(gw: Gateway) -> None:
    text = httpx.get(f"{gw.root}/metrics").text
    assert 'hearth_inter_token_latency_seconds_count{cluster="near",model="near-model"}' in text
    assert 'hearth_workers{cluster="near",model="near-model",state="hot"} 1.0' in text
    assert 'hearth_queue_depth{cluster="far",model="far-model"} 0.0' in text
    assert 'hearth_auth_decisions_total{method="static_key",outcome="allow"}' in text
