"""The Files API (https://platform.openai.com/docs/api-reference/files) for batch input and
output. Another user's file id answers 404, never 403."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.datastructures import UploadFile
from starlette.responses import FileResponse, Response

from gateway.api.responses import json_response, list_page
from gateway.deps import CurrentPrincipal, ServicesDep
from gateway.errors import InvalidRequest, NotFound, RequestTooLarge

router = APIRouter(tags=["files"])


def _not_found(file_id: str) -> NotFound:
    return NotFound(f"No such File object: {file_id}", param="file_id", code="file_not_found")


@router.post("/v1/files")
async def upload(request: Request, principal: CurrentPrincipal, services: ServicesDep) -> Response:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidRequest("Upload the file as multipart/form-data with fields `file` and `purpose`.")
    limit = services.settings.batch.max_file_bytes
    async with request.form(max_files=1, max_fields=4) as form:
        purpose, upload = form.get("purpose"), form.get("file")
        if purpose != "batch":
            raise InvalidRequest(
                "`purpose` must be 'batch' (the only purpose this gateway accepts).", param="purpose"
            )
        if not isinstance(upload, UploadFile):
            raise InvalidRequest("The form needs a `file` field holding the file.", param="file")
        try:
            info = await services.files.add_stream(
                principal.user, "batch", upload.filename or "upload.jsonl", upload.file, max_bytes=limit
            )
        except ValueError:
            raise RequestTooLarge(f"The file is larger than the limit of {limit} bytes.") from None
    services.audit.log(principal.user, "file.create", "ok", target=info.id, detail=f"{info.bytes} bytes")
    return json_response(info.to_openai())


@router.get("/v1/files")
async def list_files(
    principal: CurrentPrincipal,
    services: ServicesDep,
    purpose: str | None = None,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Annotated[str, Query(pattern="^(asc|desc)$")] = "desc",
) -> Response:
    files = await services.files.list(
        principal.user, purpose=purpose, after=after, limit=limit + 1, order=order
    )
    return json_response(list_page([f.to_openai() for f in files], limit))


@router.get("/v1/files/{file_id}")
async def retrieve(file_id: str, principal: CurrentPrincipal, services: ServicesDep) -> Response:
    info = await services.files.get(file_id, principal.user)
    if info is None:
        raise _not_found(file_id)
    return json_response(info.to_openai())


@router.get("/v1/files/{file_id}/content")
async def content(file_id: str, principal: CurrentPrincipal, services: ServicesDep) -> Response:
    info = await services.files.get(file_id, principal.user)
    if info is None or not services.files.local_path(info).is_file():
        raise _not_found(file_id)
    return FileResponse(
        services.files.local_path(info), media_type="application/octet-stream", filename=info.filename
    )


@router.delete("/v1/files/{file_id}")
async def delete(file_id: str, principal: CurrentPrincipal, services: ServicesDep) -> Response:
    if not await services.files.delete(file_id, principal.user):
        raise _not_found(file_id)
    return json_response({"id": file_id, "object": "file", "deleted": True})
