"""Globus Auth and Globus Groups, as the gateway (a resource server) uses them.

One class, one method per operation, each a single call through the real ``globus_sdk`` client
run on a small thread pool (the SDK is synchronous):

- :meth:`GlobusService.introspect` — token introspection with ``session_info`` and
  ``identity_set_detail``, and the evaluation of the configured authentication policies
  (https://docs.globus.org/api/auth/reference/#token_introspection_post_v2_oauth2_token_introspect);
- :meth:`GlobusService.groups_for_token` — a dependent token for Groups, then "my groups"
  (https://docs.globus.org/api/auth/reference/#dependent_token_grant_post_v2oauth2token,
  https://docs.globus.org/api/groups/);
- :meth:`GlobusService.groups_credential` / :meth:`GlobusService.groups_for_credential` — the
  same through a dependent *refresh* token, kept (sealed) for an API key so the key follows its
  owner's memberships after the owner's own token has expired.

Errors are two kinds: :class:`GlobusUnavailable` (cannot reach Globus, or it answered 5xx/429 —
the gateway answers 503 and fails closed) and :class:`CredentialRejected` (Globus refused a
credential: the caller must sign in again). Tokens never appear in logs or exceptions.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import globus_sdk
from globus_sdk.transport import RequestsTransport, RetryConfig

from gateway.config import GlobusSettings

__all__ = [
    "GROUPS_RESOURCE_SERVER",
    "GROUPS_SCOPE",
    "CredentialRejected",
    "GlobusService",
    "GlobusUnavailable",
    "Group",
]

log = logging.getLogger(__name__)

GROUPS_SCOPE = "urn:globus:auth:scope:groups.api.globus.org:view_my_groups_and_memberships"
GROUPS_RESOURCE_SERVER = "groups.api.globus.org"

_T = TypeVar("_T")


class GlobusUnavailable(Exception):
    """Globus could not be asked (network, timeout) or answered 5xx/429: try again later."""


class CredentialRejected(Exception):
    """Globus refused a credential we presented on the user's behalf (revoked consent, expired)."""


@dataclass(frozen=True, slots=True)
class Group:
    id: str
    name: str


class GlobusService:
    """The gateway's confidential client against Globus Auth and Groups."""

    def __init__(self, settings: GlobusSettings, *, required_policies: list[str] | None = None) -> None:
        self._settings = settings
        self._policies = ",".join(required_policies or ())
        # Fail fast: one retry at most, short sleeps; the caller answers 503 rather than hang.
        self._retry = RetryConfig(max_retries=1, max_sleep=0.5)
        self._auth = globus_sdk.ConfidentialAppAuthClient(
            client_id=settings.client_id,
            client_secret=settings.client_secret.get_secret_value(),
            base_url=settings.auth_url,
            transport=RequestsTransport(http_timeout=settings.timeout_s),
            retry_config=self._retry,
        )
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="hearth-globus")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._auth.close()

    async def introspect(self, token: str) -> dict[str, Any]:
        """The introspection response (``{"active": false}`` for a dead token)."""
        body = {"token": token, "include": "session_info,identity_set_detail"}
        if self._policies:
            body["authentication_policies"] = self._policies
        response = await self._call(
            "introspect", lambda: self._auth.post("/v2/oauth2/token/introspect", data=body, encoding="form")
        )
        data: dict[str, Any] = dict(response.data)
        return data

    async def groups_for_token(self, token: str) -> list[Group]:
        """The groups the token's user is an active member of (any linked identity)."""
        access, _ = await self._dependent_groups_token(token, offline=False)
        return await self._my_groups(access)

    async def groups_credential(self, token: str) -> str:
        """A Groups refresh token on the user's behalf, to keep (sealed) with an API key."""
        _, refresh = await self._dependent_groups_token(token, offline=True)
        if not refresh:
            raise CredentialRejected("Globus did not grant an offline Groups credential")
        return refresh

    async def groups_for_credential(self, refresh_token: str) -> list[Group]:
        """The groups of the user who granted ``refresh_token`` (from :meth:`groups_credential`)."""
        response = await self._call(
            "refresh_token", lambda: self._auth.oauth2_refresh_token(refresh_token), rejected_on_4xx=True
        )
        tokens = response.by_resource_server.get(GROUPS_RESOURCE_SERVER)
        if tokens is None:
            raise CredentialRejected("the refresh token does not grant Groups access")
        return await self._my_groups(tokens["access_token"])

    async def _dependent_groups_token(self, token: str, *, offline: bool) -> tuple[str, str | None]:
        response = await self._call(
            "dependent_token",
            lambda: self._auth.oauth2_get_dependent_tokens(token, scope=GROUPS_SCOPE, refresh_tokens=offline),
            rejected_on_4xx=True,
        )
        tokens = response.by_resource_server.get(GROUPS_RESOURCE_SERVER)
        if tokens is None:
            raise CredentialRejected(
                "the gateway's scope does not depend on Groups; see docs/admin/globus-auth.md"
            )
        return tokens["access_token"], tokens.get("refresh_token")

    async def _my_groups(self, access_token: str) -> list[Group]:
        def fetch() -> Any:
            client = globus_sdk.GroupsClient(
                base_url=self._settings.groups_url,
                authorizer=globus_sdk.AccessTokenAuthorizer(access_token),
                transport=RequestsTransport(http_timeout=self._settings.timeout_s),
                retry_config=self._retry,
            )
            try:
                return client.get_my_groups(statuses="active")
            finally:
                client.close()

        response = await self._call("my_groups", fetch, rejected_on_4xx=True)
        return [Group(id=g["id"], name=g.get("name") or g["id"]) for g in response]

    async def _call(self, operation: str, fn: Callable[[], _T], *, rejected_on_4xx: bool = False) -> _T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, fn)
        except globus_sdk.NetworkError as exc:
            log.warning("globus %s failed: %s", operation, type(exc).__name__)
            raise GlobusUnavailable(f"Globus Auth cannot be reached ({operation})") from None
        except globus_sdk.GlobusAPIError as exc:
            status = exc.http_status
            log.warning("globus %s answered %s %s", operation, status, exc.code)
            if status >= 500 or status == 429 or not rejected_on_4xx:
                raise GlobusUnavailable(f"Globus Auth answered {status} ({operation})") from None
            raise CredentialRejected(
                f"Globus refused the credential ({operation}: {status} {exc.code})"
            ) from None
