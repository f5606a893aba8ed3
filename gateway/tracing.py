"""OpenTelemetry tracing: a server span per inference request, a client span per upstream
attempt, and the W3C trace context (https://www.w3.org/TR/trace-context/) passed on to the
worker, so an engine with its own tracing (vLLM's ``--otlp-traces-endpoint``) continues it.

Off by default (``tracing.enabled``): `build_tracing` then returns None and the request path
only tests for None; nothing of OpenTelemetry's is built per request. On, spans go through a
batching processor (a background thread) to an OTLP/HTTP collector and/or the log; the
tracer provider is this process's own, never OpenTelemetry's global one.

Where the context travels: the middleware opens the server span (continuing the client's
``traceparent``, if it sent one) and makes it current for the request's task; the dispatcher
opens each attempt's span beneath it and puts that span's ``traceparent``/``tracestate`` on
the `UpstreamCall`. The direct relay sends them as headers; the compute relay puts them in the
site function's payload, and the site function sends them to the engine as headers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextvars import Token
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.types import Scope

from gateway.config import TracingSettings

__all__ = ["ServerSpan", "Tracing", "build_tracing"]

log = logging.getLogger(__name__)

_SHUTDOWN_MS = 5000
_CONTEXT_HEADERS = (b"traceparent", b"tracestate")


class ServerSpan:
    """The span of one request, current in its task from `Tracing.server_span` until `end`."""

    __slots__ = ("_token", "span")

    def __init__(self, span: Span, token: Token[Context]) -> None:
        self.span = span
        self._token = token

    def end(self, status: int) -> None:
        span = self.span
        span.set_attribute("http.response.status_code", status)
        if status >= 500:  # server span conventions: a 4xx is the client's, not an error here
            span.set_status(StatusCode.ERROR)
        otel_context.detach(self._token)
        span.end()


class Tracing:
    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("hearth.gateway")
        self._propagator = TraceContextTextMapPropagator()

    def server_span(self, scope: Scope, request_id: str) -> ServerSpan:
        """Open the span of an HTTP request and make it current; the caller must `end` it."""
        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"]
            if name in _CONTEXT_HEADERS
        }
        parent = self._propagator.extract(carrier) if carrier else None
        method, path = scope["method"], scope["path"]
        span = self.tracer.start_span(
            f"{method} {path}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": method,
                "http.route": path,
                "url.path": path,
                "hearth.request_id": request_id,
            },
        )
        return ServerSpan(span, otel_context.attach(trace.set_span_in_context(span, parent)))

    def attempt_span(self, name: str, attributes: dict[str, Any]) -> tuple[Span, str | None, str | None]:
        """Open a client span beneath the current one: the span, and its ``traceparent`` and
        ``tracestate`` header values for the worker."""
        span = self.tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=trace.set_span_in_context(span))
        return span, carrier.get("traceparent"), carrier.get("tracestate")

    @staticmethod
    def end_attempt(
        span: Span,
        status: int | None,
        *,
        failure: tuple[str, str] | None = None,
        error: BaseException | None = None,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
    ) -> None:
        """End an attempt's span with the status the worker (or the client) ended it with.

        `failure` is (reason, detail) when the attempt failed and the dispatcher moved on
        (the failover reason is the metric label of `hearth_upstream_failures_total`);
        `error` an exception that ended the request there (not the worker's doing)."""
        if status is not None:
            span.set_attribute("http.response.status_code", status)
        if failure is not None:
            reason, detail = failure
            span.set_attribute("hearth.failover_reason", reason)
            span.set_attribute("error.type", reason)
            span.set_status(StatusCode.ERROR, detail)
        elif error is not None:
            span.record_exception(error)
            span.set_status(StatusCode.ERROR, f"{type(error).__name__}: {error}")
        elif status is not None and status >= 500:
            span.set_status(StatusCode.ERROR)
        if prompt_tokens:
            span.set_attribute("gen_ai.usage.input_tokens", prompt_tokens)
        if completion_tokens:
            span.set_attribute("gen_ai.usage.output_tokens", completion_tokens)
        span.end()

    def shutdown(self) -> None:
        """Export what is queued (bounded wait) and stop the exporters. Blocking."""
        self.provider.force_flush(_SHUTDOWN_MS)
        self.provider.shutdown()


def build_tracing(settings: TracingSettings) -> Tracing | None:
    """The process's tracing from `settings`, or None when it is off."""
    if not settings.enabled:
        return None
    provider = TracerProvider(
        sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
        resource=Resource.create({"service.name": settings.service_name}),
        shutdown_on_exit=False,  # Services.stop shuts it down
    )
    if settings.otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_endpoint)))
    if settings.console:
        provider.add_span_processor(BatchSpanProcessor(LogSpanExporter()))
    if not settings.otlp_endpoint and not settings.console:
        log.warning(
            "tracing is enabled with neither tracing.otlp_endpoint nor tracing.console: the trace "
            "context is passed to the workers, but the gateway's spans are not exported"
        )
    return Tracing(provider)


class LogSpanExporter(SpanExporter):
    """Each finished span as one log line (logger ``gateway.tracing``), for trying tracing out."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        for span in spans:
            ctx = span.get_span_context()
            if ctx is None:  # pragma: no cover - a finished SDK span always has one
                continue
            start, end = span.start_time or 0, span.end_time or 0
            log.info(
                "span",
                extra={
                    "trace_id": f"{ctx.trace_id:032x}",
                    "span_id": f"{ctx.span_id:016x}",
                    "parent_span_id": f"{span.parent.span_id:016x}" if span.parent else None,
                    "span": span.name,
                    "kind": span.kind.name.lower(),
                    "duration_ms": round((end - start) / 1e6, 3),
                    "span_status": span.status.status_code.name.lower(),
                    "attributes": dict(span.attributes or {}),
                },
            )
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass
