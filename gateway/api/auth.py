"""Identity routes: how to sign in, who am I, and self-service API keys.

- ``GET /v1/auth/config`` (no auth): what `hearth login` needs (native app client id, scope).
- ``GET /v1/whoami``: the caller's identity, linked identities, the groups the gateway cares
  about, and the models and clusters they may use.
- ``POST /v1/keys``, ``GET /v1/keys[?all=true]``, ``DELETE /v1/keys/{id}``: a Globus user's own
  long-lived keys (admins see and revoke everyone's). Another user's key is a 404, not a 403.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import Response

from gateway.api.responses import json_response
from gateway.auth.globus import CredentialRejected, GlobusUnavailable
from gateway.deps import CurrentPrincipal, ServicesDep
from gateway.errors import InvalidRequest, NotFound, PermissionDenied, ServiceUnavailable
from gateway.store.keys import ApiKeyInfo

router = APIRouter(tags=["auth"])

MAX_KEYS_PER_USER = 100


class CreateKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=255)
    expires_at: int | None = Field(default=None, description="Unix seconds; null: never.")


@router.get("/v1/auth/config")
async def auth_config(services: ServicesDep) -> Response:
    g = services.globus
    globus = None
    if g is not None:
        globus = {
            "client_id": g.settings.native_client_id,
            "resource_server": g.settings.client_id,
            "scopes": [g.settings.required_scope],
            "required_policies": list(services.settings.auth.policy.required_policies),
        }
    return json_response({"object": "auth.config", "globus": globus})


@router.get("/v1/whoami")
async def whoami(principal: CurrentPrincipal, services: ServicesDep) -> Response:
    models = sorted(m for m, _ in services.catalogue.models() if principal.may_use(m))
    clusters = sorted(c for c in services.settings.clusters if principal.may_use_cluster(c))
    return json_response(
        {
            "object": "whoami",
            "id": principal.user,
            "username": principal.username,
            "name": principal.name,
            "email": principal.email,
            "identity_provider": principal.identity_provider,
            "auth": principal.auth,
            "key_id": principal.key_id,
            "is_admin": principal.is_admin,
            "linked_identities": [
                {"id": i.id, "username": i.username, "identity_provider": i.identity_provider}
                for i in principal.linked
            ],
            "groups": [{"id": g, "name": principal.group_names.get(g, g)} for g in sorted(principal.groups)],
            "models": models,
            "clusters": clusters,
        }
    )


@router.post("/v1/keys")
async def create_key(request: Request, principal: CurrentPrincipal, services: ServicesDep) -> Response:
    if principal.auth != "globus" or services.globus is None:
        raise PermissionDenied(
            "Creating API keys needs a Globus sign-in: run `hearth login`, then `hearth keys create`.",
            code="globus_token_required",
        )
    try:
        body = CreateKey.model_validate_json(await request.body())
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise InvalidRequest(f"Invalid key request: {first['msg']}", param=param) from None
    expires_at = None
    if body.expires_at is not None:
        expires_at = datetime.fromtimestamp(body.expires_at, UTC)
        if expires_at <= datetime.now(UTC):
            raise InvalidRequest("expires_at is in the past.", param="expires_at")
    if len(await services.keys.list(owner=principal.user)) >= MAX_KEYS_PER_USER:
        raise InvalidRequest(
            f"You have {MAX_KEYS_PER_USER} active keys, the most allowed; revoke some first.",
            code="too_many_keys",
        )
    sealed = None
    if services.globus.policy.needs_groups:
        token = _bearer(request)
        try:
            sealed = services.globus.owners.seal(await services.globus.service.groups_credential(token))
        except GlobusUnavailable as exc:
            raise ServiceUnavailable(f"{exc}; try again shortly.", code="auth_unavailable") from None
        except CredentialRejected:
            raise PermissionDenied(
                "Globus did not let the gateway keep access to your group memberships, which a key "
                "needs; sign in again with `hearth login --force` and consent.",
                code="consent_required",
            ) from None
    info, plaintext = await services.keys.create(
        principal.user,
        body.name,
        expires_at,
        owner_username=principal.username,
        groups_credential=sealed,
    )
    services.audit.log(principal.user, "key.create", "ok", target=info.id, detail=f"name={body.name!r}")
    return json_response({**_key_json(info), "key": plaintext}, status=201)


@router.get("/v1/keys")
async def list_keys(
    principal: CurrentPrincipal, services: ServicesDep, all: bool = False, include_revoked: bool = False
) -> Response:
    if all and not principal.is_admin:
        raise PermissionDenied("Only admins may list everyone's keys.", code="admin_required")
    keys = await services.keys.list(owner=None if all else principal.user, include_revoked=include_revoked)
    return json_response({"object": "list", "data": [_key_json(k) for k in keys]})


@router.delete("/v1/keys/{key_id}")
async def revoke_key(key_id: str, principal: CurrentPrincipal, services: ServicesDep) -> Response:
    owner = None if principal.is_admin else principal.user
    if not await services.keys.revoke(key_id, owner=owner):
        raise NotFound(f"No API key `{key_id}`.", param="key_id", code="key_not_found")
    services.auth.forget(key_id)
    action = "key.revoke" if owner is not None else "admin.key.revoke"
    services.audit.log(principal.user, action, "ok", target=key_id)
    return json_response({"object": "api_key", "id": key_id, "deleted": True})


def _bearer(request: Request) -> str:
    return request.headers.get("authorization", "").partition(" ")[2].strip()


def _key_json(info: ApiKeyInfo) -> dict[str, Any]:
    return {
        "object": "api_key",
        "id": info.id,
        "name": info.name,
        "owner": info.owner,
        "owner_username": info.owner_username,
        "created_at": _ts(info.created_at),
        "expires_at": _ts(info.expires_at),
        "last_used_at": _ts(info.last_used_at),
        "revoked_at": _ts(info.revoked_at),
    }


def _ts(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp())
