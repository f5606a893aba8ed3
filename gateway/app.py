"""create_app(settings) → the FastAPI app. Wires the parts together and does nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from gateway.api import errors, openai, status
from gateway.api.fastlane import FastLane
from gateway.config import Settings
from gateway.middleware import RequestContextMiddleware
from gateway.services import Services


def create_app(settings: Settings) -> FastAPI:
    services = Services.build(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await services.start()
        try:
            yield
        finally:
            await services.stop()

    app = FastAPI(
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
    errors.install(app)
    app.add_middleware(
        RequestContextMiddleware,
        max_body_bytes=settings.server.max_body_bytes,
        log_requests=settings.server.access_log,
        fast_lane=FastLane(services),
    )
    return app
