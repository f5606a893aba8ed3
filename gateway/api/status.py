"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from gateway.api.responses import json_response
from gateway.deps import CurrentPrincipal, ServicesDep
from gateway.routing.status import model_status

router = APIRouter(tags=["status"])


@router.get("/health")
async def health() -> Response:
    """Liveness: the process answers. Says nothing about dependencies."""
    return Response(b'{"status":"ok"}', media_type="application/json")


@router.get("/ready")
async def ready(services: ServicesDep) -> Response:
    """Readiness: the store answers and, when configured, Redis answers."""
    checks = {"store": await services.db.ping()}
    if services.redis is not None:
        checks["redis"] = await services.redis_ok()
    ok = all(checks.values())
    body = {"status": "ready" if ok else "not ready", "checks": checks}
    return json_response(body, 200 if ok else 503)


@router.get("/v1/status")
async def status(principal: CurrentPrincipal, services: ServicesDep) -> Response:
    """Per model and cluster: hot / starting / queued / cold / offline, with counts."""
    models = model_status(
        services.catalogue,
        services.router,
        services.sites,
        may_use=principal.may_use,
        may_use_cluster=principal.may_use_cluster,
        clock=services.startup_clock,
    )
    return json_response({"object": "status", "models": models})


@router.get("/metrics")
async def metrics(services: ServicesDep) -> Response:
    """Prometheus text format; the gauges of the present are read now (docs/admin/gateway.md)."""
    m = services.metrics
    m.set_present(
        in_flight=services.router.in_flight_by_deployment(),
        awaiting_first_byte=services.dispatcher.awaiting_first_byte(),
        model_status=model_status(services.catalogue, services.router, services.sites),
        usage_pending=services.usage.pending,
        usage_dropped=services.usage.dropped,
        sites_up={s.cluster: s.cluster not in services.catalogue.down_clusters for s in services.sites},
    )
    return Response(m.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
