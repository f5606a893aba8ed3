"""The Batch API (https://platform.openai.com/docs/api-reference/batch). Batches run in the
background (:mod:`gateway.batch.runner`); these routes create, show, list and cancel them.
Another user's batch id answers 404, never 403."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import Response

from gateway.api.responses import json_response, list_page
from gateway.batch.principals import dump_principal
from gateway.deps import CurrentPrincipal, ServicesDep
from gateway.errors import InvalidRequest, NotFound, RateLimited
from gateway.store.batches import batch_to_openai

router = APIRouter(tags=["batches"])

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
WINDOWS = {"24h": timedelta(hours=24)}


class CreateBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_file_id: str = Field(min_length=1, max_length=64)
    endpoint: Literal["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]
    completion_window: Literal["24h"]
    metadata: dict[str, Annotated[str, Field(max_length=512)]] | None = Field(default=None, max_length=16)


def _not_found(batch_id: str) -> NotFound:
    return NotFound(f"No batch found with id '{batch_id}'.", param="batch_id", code="batch_not_found")


@router.post("/v1/batches")
async def create(request: Request, principal: CurrentPrincipal, services: ServicesDep) -> Response:
    try:
        body = CreateBatch.model_validate_json(await request.body())
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise InvalidRequest(f"Invalid batch request: {first['msg']}", param=param) from None
    info = await services.files.get(body.input_file_id, principal.user)
    if info is None:
        raise NotFound(
            f"No such File object: {body.input_file_id}", param="input_file_id", code="file_not_found"
        )
    if info.purpose != "batch":
        raise InvalidRequest(
            "The input file must have been uploaded with purpose 'batch'.", param="input_file_id"
        )
    limit = services.settings.batch.max_active_batches_per_user
    if await services.batches.count_active(principal.user) >= limit:
        raise RateLimited(
            f"You have {limit} batches in progress, the most allowed; wait for one to finish or cancel one.",
            code="too_many_batches",
            headers={"retry-after": "60"},
        )
    batch = await services.batches.create(
        owner=principal.user, principal=dump_principal(principal), endpoint=body.endpoint,
        input_file_id=body.input_file_id, completion_window=WINDOWS[body.completion_window],
        window_name=body.completion_window, metadata=body.metadata,
    )  # fmt: skip
    services.audit.log(principal.user, "batch.create", "ok", target=batch.id, detail=f"file={info.id}")
    services.batch_runner.wake()
    return json_response(batch_to_openai(batch))


@router.get("/v1/batches/{batch_id}")
async def retrieve(batch_id: str, principal: CurrentPrincipal, services: ServicesDep) -> Response:
    batch = await services.batches.get(batch_id, principal.user)
    if batch is None:
        raise _not_found(batch_id)
    return json_response(batch_to_openai(batch))


@router.get("/v1/batches")
async def list_batches(
    principal: CurrentPrincipal,
    services: ServicesDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> Response:
    batches = await services.batches.list(principal.user, after=after, limit=limit + 1)
    return json_response(list_page([batch_to_openai(b) for b in batches], limit))


@router.post("/v1/batches/{batch_id}/cancel")
async def cancel(batch_id: str, principal: CurrentPrincipal, services: ServicesDep) -> Response:
    batch = await services.batches.request_cancel(batch_id, principal.user)
    if batch is None:
        raise _not_found(batch_id)
    services.audit.log(principal.user, "batch.cancel", "ok", target=batch_id)
    return json_response(batch_to_openai(batch))
