"""OpenAI-compatible inference routes. Thin: read and validate, pick JSON or SSE, delegate.

Contract: https://platform.openai.com/docs/api-reference (models, chat, completions,
embeddings). Fields the gateway does not need are passed to the worker untouched.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.api.held import HeldStream
from gateway.api.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, validate
from gateway.api.responses import ClientDisconnected, SSEResponse, cancel_on_disconnect, reply_response
from gateway.auth.principal import Principal
from gateway.deps import CurrentPrincipal, ServicesDep
from gateway.errors import InvalidRequest, ModelNotFound, UpstreamUnavailable
from gateway.limits.buckets import estimate_tokens
from gateway.relay.base import UpstreamReply
from gateway.relay.dispatch import CallContext
from gateway.routing.coldstart import Progress
from gateway.routing.sites import SiteDirectory
from gateway.services import Services

router = APIRouter(prefix="/v1", tags=["openai"])

_JSON = "application/json"


@router.get("/models")
async def list_models(principal: CurrentPrincipal, services: ServicesDep) -> Response:
    data = [_model_card(m, created) for m, created in services.catalogue.models() if principal.may_use(m)]
    return Response(orjson.dumps({"object": "list", "data": data}), media_type=_JSON)


@router.get("/models/{model_id:path}")
async def retrieve_model(model_id: str, principal: CurrentPrincipal, services: ServicesDep) -> Response:
    for m, created in services.catalogue.models():
        if m == model_id and principal.may_use(m):
            return Response(orjson.dumps(_model_card(m, created)), media_type=_JSON)
    raise ModelNotFound(model_id)


@router.post("/chat/completions")
async def chat_completions(request: Request, principal: CurrentPrincipal, services: ServicesDep) -> Response:
    return await generate(
        request, await request.body(), principal, services, ChatCompletionRequest, "chat.completions"
    )


@router.post("/completions")
async def completions(request: Request, principal: CurrentPrincipal, services: ServicesDep) -> Response:
    return await generate(
        request, await request.body(), principal, services, CompletionRequest, "completions"
    )


@router.post("/embeddings")
async def embeddings(request: Request, principal: CurrentPrincipal, services: ServicesDep) -> Response:
    return await generate(request, await request.body(), principal, services, EmbeddingRequest, "embeddings")


GenerationSchema = type[ChatCompletionRequest | CompletionRequest | EmbeddingRequest]

# The inference routes by path: (request schema, endpoint name). Also served by the fast lane.
GENERATION_ROUTES: dict[str, tuple[GenerationSchema, str]] = {
    "/v1/chat/completions": (ChatCompletionRequest, "chat.completions"),
    "/v1/completions": (CompletionRequest, "completions"),
    "/v1/embeddings": (EmbeddingRequest, "embeddings"),
}


async def generate(
    request: Request,
    body: bytes,
    principal: Principal,
    services: Services,
    schema: GenerationSchema,
    endpoint: str,
) -> Response:
    """Validate, relay; answer with JSON or SSE. The body of every inference route."""
    payload = parse_json(body)
    validate(schema, payload)
    state = request.scope["state"]
    cluster = pinned_cluster(payload, request.headers.get("x-hearth-cluster"))
    if principal.groups:
        services.rollups.note_groups(principal)
    limiter = services.limiter
    reservation = None
    if limiter.enabled:
        estimate = estimate_tokens(payload, len(body), endpoint, services.settings.limits.default_max_tokens)
        reservation = await limiter.reserve(principal, str(payload["model"]), estimate)
    ctx = CallContext(
        principal, state["request_id"], endpoint, endpoint.replace(".", "/"), state["started"], cluster,
        reservation,
    )  # fmt: skip
    try:
        response = await _relay(request, services, ctx, payload, schema)
    except BaseException:
        limiter.settle(reservation, 0)  # a no-op when the usage record already settled it
        raise
    if reservation is not None:
        response.headers.update(reservation.headers())
    return response


async def _relay(
    request: Request, services: Services, ctx: CallContext, payload: dict[str, Any], schema: GenerationSchema
) -> Response:
    cold = _cold_sites(services, ctx, payload)
    try:
        if cold and payload.get("stream") and schema is not EmbeddingRequest:
            return SSEResponse(_held(services, ctx, payload, cold))
        if cold:
            await cancel_on_disconnect(request, _wait_cold(services, ctx, payload, cold))
        if payload.get("stream") and schema is not EmbeddingRequest:
            opened = await cancel_on_disconnect(request, services.dispatcher.stream(ctx, payload))
            if isinstance(opened, UpstreamReply):
                return reply_response(opened)
            return SSEResponse(opened)
        reply = await cancel_on_disconnect(request, services.dispatcher.unary(ctx, payload))
    except ClientDisconnected:
        services.limiter.settle(ctx.reservation, 0)
        return Response(status_code=499)  # nobody is listening; nothing is sent
    return reply_response(reply)


def _cold_sites(services: Services, ctx: CallContext, payload: dict[str, Any]) -> list[SiteDirectory]:
    """Where the requested model could be started, when no worker serves it now (else [])."""
    model = str(payload["model"])
    if services.catalogue.deployments(model) or ctx.principal.refusal(model) is not None:
        return []
    served = _served(services, model)
    sites = services.cold_starts.startable(served, ctx.principal.may_use_cluster)
    return [s for s in sites if ctx.cluster is None or s.cluster == ctx.cluster]


def _served(services: Services, model: str) -> str:
    rule = services.settings.models.get(model)
    return rule.served_name if rule is not None and rule.served_name else model


async def _wait_cold(
    services: Services, ctx: CallContext, payload: dict[str, Any], sites: list[SiteDirectory]
) -> None:
    """Start the model and wait for it; 503 with Retry-After if it is not up in time."""
    model = str(payload["model"])
    wait_s = services.settings.relay.cold_start_wait_s
    if await services.cold_starts.wait_ready(model, _served(services, model), sites, wait_s):
        return
    progress = services.cold_starts.progress(model)
    where = f" on cluster `{progress.cluster}` ({progress.state})" if progress else ""
    raise UpstreamUnavailable(
        f"The model `{model}` is starting{where}. Try again shortly; GET /v1/status shows its state.",
        code="model_starting",
        headers={"retry-after": "30"},
    )


def _held(
    services: Services, ctx: CallContext, payload: dict[str, Any], sites: list[SiteDirectory]
) -> HeldStream:
    model = str(payload["model"])
    relay = services.settings.relay

    def wait(on_wait: Callable[[Progress], None]) -> Awaitable[bool]:
        return services.cold_starts.wait_ready(
            model, _served(services, model), sites, relay.cold_start_stream_wait_s, on_wait,
            tick_s=relay.keepalive_s,
        )  # fmt: skip

    return HeldStream(model, wait, lambda: services.dispatcher.stream(ctx, payload))


def pinned_cluster(payload: dict[str, Any], header: str | None) -> str | None:
    """The cluster a request is pinned to: `model@cluster` (the suffix is removed from the
    payload) or the X-Hearth-Cluster header; None lets Hearth choose."""
    model = str(payload["model"])
    name, at, cluster = model.rpartition("@")
    if at and name and cluster:
        payload["model"] = name
        if header and header != cluster:
            raise InvalidRequest(
                f"`model` pins cluster `{cluster}` but X-Hearth-Cluster says `{header}`.", param="model"
            )
        return cluster
    return header or None


def parse_json(body: bytes) -> dict[str, Any]:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidRequest(
            "We could not parse the JSON body of your request. The body must be valid JSON "
            "(check the Content-Type and the encoding).",
            code="invalid_json",
        ) from None
    if not isinstance(payload, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_type")
    return payload


def _model_card(model: str, created: int) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": created, "owned_by": "hearth"}
