"""The dispatcher: send one request to the best deployment, failing over before the first byte.

It asks the router for deployments in order, tries them through the relay, moves on after a
connect error, timeout or 5xx, and returns the first answer. For streams, an attempt counts as
answered once the first event has arrived; after that, trouble ends the stream with an error
event (see `gateway.relay.stream`). Every request, answered or not, becomes one usage record
and one set of metric observations. With tracing on (`gateway.tracing`), each attempt is a
span whose trace context goes to the worker with the request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from gateway.auth.principal import Principal
from gateway.errors import (
    HearthError,
    NotFound,
    PermissionDenied,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.limits.limiter import Limiter, Reservation
from gateway.metrics import GatewayMetrics
from gateway.relay.base import (
    BadResponse,
    ConnectFailed,
    EventStream,
    Relay,
    RelayError,
    StreamBroken,
    TimedOut,
    UpstreamCall,
    UpstreamReply,
)
from gateway.relay.stream import ClientStream, StreamOutcome
from gateway.routing.affinity import affinity_key
from gateway.routing.catalogue import Deployment
from gateway.routing.router import Router
from gateway.store.usage import UsageRecord, UsageRecorder
from gateway.tracing import Tracing

if TYPE_CHECKING:
    from opentelemetry.trace import Span

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CallContext:
    principal: Principal
    request_id: str
    endpoint: str  # "chat.completions", "completions", "embeddings"
    path: str  # below /v1: "chat/completions"
    started: float  # time.perf_counter() when the request arrived
    cluster: str | None = None  # pinned by `model@cluster` or X-Hearth-Cluster
    reservation: Reservation | None = None  # what the limiter charged; settled with the usage


class Dispatcher:
    def __init__(
        self,
        router: Router,
        relay: Relay,
        metrics: GatewayMetrics,
        usage: UsageRecorder | None,
        *,
        max_attempts: int = 3,
        limiter: Limiter | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.router = router
        self.relay = relay
        self.metrics = metrics
        self.usage = usage
        self.max_attempts = max_attempts
        self.limiter = limiter
        self.tracing = tracing
        # Attempts sent and not answered yet (no first byte), by (model, cluster): the gateway's
        # view of the engines' queues, read by GET /metrics as hearth_queue_depth.
        self._awaiting: dict[tuple[str, str], int] = {}

    def awaiting_first_byte(self) -> dict[tuple[str, str], int]:
        """Requests sent to a worker that has not answered yet, by (model, cluster)."""
        return dict(self._awaiting)

    async def unary(self, ctx: CallContext, payload: dict[str, Any]) -> UpstreamReply:
        """Relay a non-streaming request; 4xx answers from the worker are passed through."""
        model = str(payload["model"])
        last: RelayError | None = None
        for attempt, dep in enumerate(self._candidates(ctx, model, payload), 1):
            call = UpstreamCall(ctx.path, _encode(payload, dep), ctx.request_id)
            span = None
            if self.tracing is not None:
                span, call = self._traced(ctx, dep, attempt, call)
            with self._in_flight(dep):
                try:
                    reply = await self.relay.send(dep.upstream, call)
                except RelayError as exc:
                    self._attempt_failed(dep, exc, span)
                    last = exc
                    continue
                except asyncio.CancelledError:  # the client went away; the worker is told by
                    self._finish(ctx, dep, 499, 0, 0, None, stream=False)  # the closed socket
                    _abandoned(span, None)
                    raise
                except BaseException as exc:
                    _abandoned(span, exc)
                    raise
            self.router.succeeded(dep)
            body = _rename(reply.body, dep)
            prompt, completion = _usage_of(body) if reply.status == 200 else (0, 0)
            self._finish(ctx, dep, reply.status, prompt, completion, None, stream=False)
            if span is not None:
                Tracing.end_attempt(span, reply.status, prompt_tokens=prompt, completion_tokens=completion)
            return UpstreamReply(reply.status, body, reply.content_type)
        raise self._exhausted(ctx, model, last, stream=False)

    async def stream(self, ctx: CallContext, payload: dict[str, Any]) -> ClientStream | UpstreamReply:
        """Open a stream and return its client-ready events (or a 4xx reply from the worker)."""
        model = str(payload["model"])
        options = payload.get("stream_options") or {}
        wants_usage = bool(options.get("include_usage"))
        upstream_payload = {**payload, "stream_options": {**options, "include_usage": True}}
        last: RelayError | None = None
        for attempt, dep in enumerate(self._candidates(ctx, model, payload), 1):
            call = UpstreamCall(ctx.path, _encode(upstream_payload, dep), ctx.request_id)
            span = None
            if self.tracing is not None:
                span, call = self._traced(ctx, dep, attempt, call)
            self.router.begin(dep)
            waiting = self._awaiting_begin(dep)
            opened: EventStream | UpstreamReply | None = None
            try:
                opened = await self.relay.open_stream(dep.upstream, call)
                if isinstance(opened, UpstreamReply):
                    self._finish(ctx, dep, opened.status, 0, 0, None, stream=True)
                    self._end(dep)
                    if span is not None:
                        Tracing.end_attempt(span, opened.status)
                    return opened
                events = aiter(opened)
                first = await anext(events, None)
                if first is None:
                    raise StreamBroken(dep.upstream, "the stream ended before any event")
            except RelayError as exc:
                if isinstance(opened, EventStream):
                    await opened.aclose()
                self._end(dep)
                self._attempt_failed(dep, exc, span)
                last = exc
                continue
            except BaseException as exc:
                if isinstance(opened, EventStream):
                    await opened.aclose()
                self._end(dep)
                _abandoned(span, None if isinstance(exc, asyncio.CancelledError) else exc)
                raise
            finally:
                self._awaiting[waiting] -= 1
            self.router.succeeded(dep)

            def closed(outcome: StreamOutcome, dep: Deployment = dep, span: Span | None = span) -> None:
                self._end(dep)
                self._finish(
                    ctx,
                    dep,
                    outcome.status,
                    outcome.prompt_tokens,
                    outcome.completion_tokens,
                    outcome.ttft_s,
                    stream=True,
                )
                if span is not None:
                    Tracing.end_attempt(
                        span,
                        outcome.status,
                        prompt_tokens=outcome.prompt_tokens,
                        completion_tokens=outcome.completion_tokens,
                    )

            return ClientStream(
                opened,
                events,
                first,
                started=ctx.started,
                client_wants_usage=wants_usage,
                renames=_renames(dep),
                on_close=closed,
                inter_token=self.metrics.inter_token.labels(dep.model, dep.upstream.cluster),
            )
        raise self._exhausted(ctx, model, last, stream=True)

    def _traced(
        self, ctx: CallContext, dep: Deployment, attempt: int, call: UpstreamCall
    ) -> tuple[Span, UpstreamCall]:
        """The span of one attempt (beneath the request's), and the call carrying its context."""
        assert self.tracing is not None
        span, traceparent, tracestate = self.tracing.attempt_span(
            f"upstream {ctx.endpoint}",
            {
                "hearth.model": dep.model,
                "hearth.cluster": dep.upstream.cluster,
                "hearth.upstream": dep.upstream.name,
                "hearth.attempt": attempt,
                "hearth.request_id": ctx.request_id,
                "gen_ai.request.model": dep.upstream_model,
            },
        )
        call = UpstreamCall(call.path, call.body, call.request_id, traceparent, tracestate)
        return span, call

    def _awaiting_begin(self, dep: Deployment) -> tuple[str, str]:
        key = (dep.model, dep.upstream.cluster)
        self._awaiting[key] = self._awaiting.get(key, 0) + 1
        return key

    def _candidates(self, ctx: CallContext, model: str, payload: dict[str, Any]) -> list[Deployment]:
        router = self.router
        # The conversation's prefix, so its turns reach the engine that has it cached; only
        # worth computing when there is a choice of engine.
        affinity = affinity_key(ctx.path, payload) if router.wants_affinity(model) else None
        deployments = router.candidates(model, affinity)  # ModelNotFound first: 404 before 403
        principal = ctx.principal
        refusal = principal.refusal(model)
        if refusal is not None:
            raise PermissionDenied(refusal, param="model")
        if ctx.cluster is not None:
            deployments = [d for d in deployments if d.upstream.cluster == ctx.cluster]
            if not deployments:
                raise NotFound(
                    f"The model `{model}` is not served on cluster `{ctx.cluster}`.", param="model",
                    code="model_not_on_cluster",
                )  # fmt: skip
        if principal.blocked_clusters:
            allowed = [d for d in deployments if principal.may_use_cluster(d.upstream.cluster)]
            if not allowed:
                reason = principal.cluster_refusal(deployments[0].upstream.cluster)
                raise PermissionDenied(reason or f"You may not use `{model}` on any cluster.", param="model")
            deployments = allowed
        return deployments[: self.max_attempts]

    def _in_flight(self, dep: Deployment) -> _InFlight:
        return _InFlight(self, dep)

    def _end(self, dep: Deployment) -> None:
        self.router.end(dep)

    def _attempt_failed(self, dep: Deployment, exc: RelayError, span: Span | None) -> None:
        if span is not None:
            Tracing.end_attempt(
                span, exc.status if isinstance(exc, BadResponse) else None, failure=(exc.reason, exc.detail)
            )
        log.warning(
            "upstream attempt failed",
            extra={
                "upstream": dep.upstream.name,
                "model": dep.model,
                "reason": exc.reason,
                "detail": exc.detail,
            },
        )
        self.router.failed(dep)
        self.metrics.child(self.metrics.upstream_failures, dep.upstream.name, exc.reason).inc()

    def _exhausted(
        self, ctx: CallContext, model: str, last: RelayError | None, *, stream: bool
    ) -> HearthError:
        """The error for a request no upstream could answer. Clients learn which worker and
        what went wrong, not internal addresses (those are in the gateway's log)."""
        error: HearthError
        if last is None:
            error = UpstreamUnavailable(f"No worker is available for model `{model}`.")
        else:
            worker = f"The worker {last.upstream.name!r} for `{model}`"
            status = last.status if isinstance(last, BadResponse) else None
            if isinstance(last, TimedOut):
                error = UpstreamTimeout(f"{worker} did not answer in time.")
            elif status == 429:
                error = RateLimited(
                    f"Every worker for `{model}` is at capacity; retry shortly.", headers={"Retry-After": "1"}
                )
            elif status == 503:
                error = UpstreamUnavailable(f"{worker} is unavailable (HTTP 503); retry shortly.")
            elif status in (401, 403):
                error = UpstreamError(
                    f"{worker} refused the gateway's credentials; an administrator must check its api_key.",
                    code="upstream_auth_failed",
                )
            elif isinstance(last, ConnectFailed):
                error = UpstreamError(f"{worker} could not be reached.", code="upstream_unreachable")
            elif status is not None:
                error = UpstreamError(f"{worker} failed (HTTP {status}).")
            else:
                error = UpstreamError(f"{worker} sent a broken response.")
        self.metrics.requests.labels(ctx.endpoint, model, "", "", str(error.status)).inc()
        self._record(ctx, model, "", "", error.status, 0, 0, None, stream=stream)
        return error

    def _finish(
        self,
        ctx: CallContext,
        dep: Deployment,
        status: int,
        prompt: int,
        completion: int,
        ttft_s: float | None,
        *,
        stream: bool,
    ) -> None:
        m = self.metrics
        up, cluster = dep.upstream.name, dep.upstream.cluster
        m.requests.labels(ctx.endpoint, dep.model, cluster, up, str(status)).inc()
        m.latency.labels(ctx.endpoint, dep.model, cluster).observe(time.perf_counter() - ctx.started)
        if ttft_s is not None:
            m.ttft.labels(dep.model, cluster).observe(ttft_s)
        if prompt:
            m.tokens.labels(dep.model, cluster, "prompt").inc(prompt)
        if completion:
            m.tokens.labels(dep.model, cluster, "completion").inc(completion)
        self._record(ctx, dep.model, cluster, up, status, prompt, completion, ttft_s, stream=stream)

    def _record(
        self,
        ctx: CallContext,
        model: str,
        cluster: str,
        upstream: str,
        status: int,
        prompt: int,
        completion: int,
        ttft_s: float | None,
        *,
        stream: bool,
    ) -> None:
        if self.limiter is not None:
            self.limiter.settle(ctx.reservation, prompt + completion)
        if self.usage is None:
            return
        self.usage.record(
            UsageRecord(
                ts=datetime.now(UTC),
                request_id=ctx.request_id,
                user=ctx.principal.user,
                api_key_id=ctx.principal.key_id,
                model=model,
                cluster=cluster,
                upstream=upstream,
                endpoint=ctx.endpoint,
                status=status,
                prompt_tokens=prompt,
                completion_tokens=completion,
                latency_ms=(time.perf_counter() - ctx.started) * 1000.0,
                ttft_ms=None if ttft_s is None else ttft_s * 1000.0,
                stream=stream,
            )
        )


def _abandoned(span: Span | None, error: BaseException | None) -> None:
    """End the span of an attempt cut short by the client leaving (None: 499) or an error."""
    if span is not None:
        Tracing.end_attempt(span, 499 if error is None else None, error=error)


class _InFlight:
    """A non-streaming attempt: in flight at the router, and awaiting its answer (the engine
    sends nothing before the whole of it)."""

    __slots__ = ("_d", "_dep", "_key")

    def __init__(self, dispatcher: Dispatcher, dep: Deployment) -> None:
        self._d = dispatcher
        self._dep = dep

    def __enter__(self) -> None:
        self._d.router.begin(self._dep)
        self._key = self._d._awaiting_begin(self._dep)

    def __exit__(self, *exc: object) -> None:
        self._d._awaiting[self._key] -= 1
        self._d._end(self._dep)


def _encode(payload: dict[str, Any], dep: Deployment) -> bytes:
    if dep.upstream_model != payload["model"]:
        payload = {**payload, "model": dep.upstream_model}
    return orjson.dumps(payload)


def _renames(dep: Deployment) -> tuple[tuple[bytes, bytes], ...]:
    """Byte replacements that put the public model name in the worker's answers."""
    if dep.upstream_model == dep.model:
        return ()
    old, new = orjson.dumps(dep.upstream_model), orjson.dumps(dep.model)
    return ((b'"model":' + old, b'"model":' + new), (b'"model": ' + old, b'"model": ' + new))


def _rename(body: bytes, dep: Deployment) -> bytes:
    for old, new in _renames(dep):
        body = body.replace(old, new)
    return body


def _usage_of(body: bytes) -> tuple[int, int]:
    try:
        usage = orjson.loads(body).get("usage") or {}
        return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
        return 0, 0
