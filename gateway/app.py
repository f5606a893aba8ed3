"""create_app(settings) → the FastAPI app. Wires the parts together and does nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.api import auth, batches, errors, files, internal, openai, status, status_page, usage
from gateway.api.fastlane import FastLane
from gateway.config import Settings
from gateway.middleware import RequestContextMiddleware
from gateway.services import Services
from gateway.serving.lane import Lane


def create_app(settings: Settings) -> FastAPI:
    services = Services.build(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await services.start()
        try:
            yield
        finally:
            await services.stop()

    app = HearthApp(
        title="Hearth",
        summary="OpenAI-compatible inference gateway for HPC clusters",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.services = services
    app.include_router(openai.router)
    app.include_router(status.router)
    app.include_router(status_page.router)
    app.include_router(auth.router)
    app.include_router(usage.router)
    app.include_router(files.router)
    app.include_router(batches.router)
    app.include_router(internal.router)
    errors.install(app)
    fast_lane = FastLane(services)
    app.outer = RequestContextMiddleware(
        app.framework,
        max_body_bytes=settings.server.max_body_bytes,
        # A multipart upload carries the file plus its form framing.
        path_limits={"/v1/files": settings.batch.max_file_bytes + 64 * 1024},
        log_requests=settings.server.access_log,
        fast_lane=fast_lane,
    )
    # Served by `gateway.serving` (hearth serve): inference POSTs straight from the connection.
    # With tracing on they go through the middleware, which holds the server span.
    app.lane = Lane(app.outer, fast_lane) if services.tracing is None else None
    return app


class HearthApp(FastAPI):
    """FastAPI with Hearth's request middleware outside the framework's own middleware stack.

    `add_middleware` would put it inside Starlette's error and FastAPI's telemetry and body
    limit layers, which the fast lane exists to skip. Everything else is plain FastAPI.
    """

    outer: ASGIApp
    lane: Lane | None = None

    async def framework(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.outer(scope, receive, send)
