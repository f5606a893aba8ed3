"""Dependency aliases for routes: the services of this app and the calling principal."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.auth.principal import Principal
from gateway.services import Services


async def get_services(request: Request) -> Services:  # async: a sync dependency costs a thread hop
    services: Services = request.app.state.services
    return services


async def current_principal(request: Request) -> Principal:
    services: Services = request.app.state.services
    return await services.auth.authenticate(request.headers.get("authorization"))


ServicesDep = Annotated[Services, Depends(get_services)]
CurrentPrincipal = Annotated[Principal, Depends(current_principal)]
