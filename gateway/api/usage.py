"""GET /v1/usage: a user's own usage; an admin's view of everyone's. From the rollups."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from starlette.responses import Response

from gateway.api.responses import json_response
from gateway.deps import CurrentPrincipal, ServicesDep
from gateway.durations import parse_duration
from gateway.errors import InvalidRequest, PermissionDenied
from gateway.store.models import utcnow
from gateway.store.reports import GROUPINGS, Grouping, summary

router = APIRouter(tags=["usage"])


@router.get("/v1/usage")
async def usage(
    principal: CurrentPrincipal,
    services: ServicesDep,
    since: str = "7d",
    by: Annotated[list[str] | None, Query()] = None,
    user: str | None = None,
    all: bool = False,
) -> Response:
    """Totals since ``since`` (e.g. 24h, 7d), grouped ``by`` (repeatable: user, model, cluster,
    group, day; default model). Admins may ask for ``all=true`` or another ``user``."""
    try:
        start = utcnow() - parse_duration(since)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="since") from None
    groupings = by or ["model"]
    bad = [b for b in groupings if b not in GROUPINGS]
    if bad:
        raise InvalidRequest(f"`by` must be among {', '.join(GROUPINGS)}; got {bad[0]!r}.", param="by")
    if (all or (user is not None and user != principal.user)) and not principal.is_admin:
        raise PermissionDenied("Only admins may see other users' usage.", code="admin_required")
    who = None if all else (user or principal.user)
    rows = await summary(services.db, since=start, by=[_g(b) for b in groupings], user=who)
    data = [
        {
            **dict(zip(groupings, row.key, strict=True)),
            "requests": row.requests,
            "errors": row.errors,
            "prompt_tokens": row.prompt_tokens,
            "completion_tokens": row.completion_tokens,
            "total_tokens": row.total_tokens,
        }
        for row in rows
    ]
    body = {"object": "list", "since": int(start.timestamp()), "by": groupings, "user": who, "data": data}
    return json_response(body)


def _g(name: str) -> Grouping:
    assert name in GROUPINGS
    return name
