"""A small HTTP client for the gateway's own (non-OpenAI) endpoints, as the CLI uses them.

One method per operation, one error class (:class:`GatewayError`):

- :meth:`GatewayClient.auth_config` — ``GET /v1/auth/config`` (no credential): the native app's
  client id, the gateway's scope and the authentication policies it requires;
- :meth:`GatewayClient.whoami` — ``GET /v1/whoami``;
- :meth:`GatewayClient.create_key` / :meth:`list_keys` / :meth:`revoke_key` — ``POST`` /
  ``GET`` / ``DELETE /v1/keys``.

Errors arrive as the OpenAI error body ``{"error": {"message", "type", "param", "code"}}``
(https://platform.openai.com/docs/guides/error-codes); when that body also carries Globus's
``authorization_parameters`` (a Globus Auth Requirements Error,
https://globus-sdk-python.readthedocs.io/en/stable/authorization/gares.html) the gateway is
asking for a fresh sign-in and :attr:`GatewayError.reauthenticate` is true.

The credential is an ``httpx.Auth`` (see :class:`gateway.client.login.GlobusTokenAuth`, which
refreshes the token and retries once on 401), so this module never sees how tokens are kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
from globus_sdk import gare

__all__ = ["GatewayClient", "GatewayError", "GlobusLoginConfig", "gateway_root"]


class GatewayError(Exception):
    """The gateway refused (status, its message and code) or could not be reached (status None)."""

    def __init__(
        self, status: int | None, message: str, code: str | None = None, *, reauthenticate: bool = False
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.reauthenticate = reauthenticate


@dataclass(frozen=True)
class GlobusLoginConfig:
    """How to sign in to this gateway with Globus Auth (the ``globus`` part of /v1/auth/config)."""

    client_id: str  # the native app users sign in through
    resource_server: str  # the gateway's own client id: whose tokens we keep
    scopes: tuple[str, ...]
    required_policies: tuple[str, ...]


def gateway_root(url: str) -> str:
    """The gateway's root URL: users may paste the OpenAI base URL (…/v1) or the root."""
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"{url!r} is not an http(s) URL")
    return url.removesuffix("/v1")


class GatewayClient:
    """The gateway's Hearth endpoints, synchronously (the CLI has nothing else to do meanwhile)."""

    def __init__(
        self,
        url: str,
        *,
        auth: httpx.Auth | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.root = gateway_root(url)
        self._http = httpx.Client(
            base_url=f"{self.root}/v1",
            auth=auth,
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
        )

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def auth_config(self) -> GlobusLoginConfig | None:
        """The Globus sign-in parameters; None when the gateway has no Globus Auth configured."""
        data = self._call("GET", "/auth/config", auth=None)
        globus = data.get("globus")
        if globus is None:
            return None
        try:
            return GlobusLoginConfig(
                client_id=str(globus["client_id"]),
                resource_server=str(globus["resource_server"]),
                scopes=tuple(str(s) for s in globus["scopes"]),
                required_policies=tuple(str(p) for p in globus.get("required_policies") or ()),
            )
        except (KeyError, TypeError):
            raise GatewayError(200, f"{self.root}/v1/auth/config answered an unexpected body") from None

    def whoami(self) -> dict[str, Any]:
        """Who the credential belongs to, their linked identities, groups, models and clusters."""
        return self._call("GET", "/whoami")

    def create_key(self, name: str, expires_at: int | None) -> dict[str, Any]:
        """A new API key for the signed-in user; the answer's ``key`` is the only copy."""
        return self._call("POST", "/keys", json={"name": name, "expires_at": expires_at})

    def list_keys(self, *, everyone: bool = False) -> list[dict[str, Any]]:
        """The user's keys (never their secrets); ``everyone`` lists all users' keys (admins)."""
        data = self._call("GET", "/keys", params={"all": "true"} if everyone else None)
        keys = data.get("data")
        if not isinstance(keys, list):
            raise GatewayError(200, f"{self.root}/v1/keys answered an unexpected body")
        return keys

    def revoke_key(self, key_id: str) -> dict[str, Any]:
        """Revoke one of the user's keys (an admin may revoke anyone's)."""
        return self._call("DELETE", f"/keys/{quote(key_id, safe='')}")

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise GatewayError(None, f"cannot reach {self.root}: {_reason(exc)}") from None
        if response.is_error:
            raise error_from_response(response)
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise GatewayError(response.status_code, f"{response.url} answered something that is not JSON")
        return data


def error_from_response(response: httpx.Response) -> GatewayError:
    """The OpenAI error body's message and code, or the status line when there is none."""
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        code = error.get("code")
        return GatewayError(
            status,
            error["message"],
            code if isinstance(code, str) else None,
            reauthenticate=gare.is_gare(error),
        )
    reason = response.reason_phrase or "error"
    return GatewayError(status, f"{response.url} answered HTTP {status} {reason}")


def _reason(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    return str(exc) or type(exc).__name__
