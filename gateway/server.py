"""Run the gateway on uvicorn (uvloop + httptools when available)."""

from __future__ import annotations

import asyncio
import importlib.util

import uvicorn

from gateway.app import create_app
from gateway.config import Settings
from gateway.logs import configure_logging


def serve(settings: Settings) -> None:
    configure_logging(settings.server.log_level)
    http: type[asyncio.Protocol] | str = "h11"
    if importlib.util.find_spec("httptools"):
        from gateway.serving.protocol import HearthHttpProtocol

        http = HearthHttpProtocol  # inference POSTs served from the connection (gateway/serving)
    config = uvicorn.Config(
        create_app(settings),
        host=settings.server.host,
        port=settings.server.port,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http=http,
        access_log=False,  # the gateway writes its own JSON access log
        log_config=None,
        lifespan="on",
        timeout_keep_alive=75,
        server_header=False,
        proxy_headers=False,  # the gateway never reads the client address; skip the rewrite
    )
    uvicorn.Server(config).run()
