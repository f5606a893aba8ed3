"""Signing in to a gateway with Globus Auth, as a native app, through the real ``globus_sdk``.

- :func:`start_login` / :meth:`LoginFlow.finish` — the native-app authorization-code grant
  with PKCE (https://docs.globus.org/api/auth/developer-guide/#obtaining-authorization,
  RFC 7636), asking for a refresh token. The user opens the authorize URL, signs in, and pastes
  back the code Globus shows them.
- :class:`Session` — the stored login, its access token refreshed silently when it expires
  within 60 s (``globus_sdk.RefreshTokenAuthorizer``; the refresh-token grant,
  https://docs.globus.org/api/auth/reference/#refresh_token_grant), the new tokens saved at
  once (Globus may rotate the refresh token).
- :func:`logout` — revoke both tokens
  (https://docs.globus.org/api/auth/reference/#token_revocation) and delete the file, even when
  Globus cannot be reached.

The gateway's required authentication policies (from ``GET /v1/auth/config``) are always sent as
``session_required_policies``, so Globus makes the session meet them before it issues a token
that the gateway would refuse anyway; ``force`` adds ``prompt=login`` so that the user signs in
again even if their Globus session is recent (``hearth login --force``, or when the gateway
answered with a Globus Auth requirements error).

Errors are :class:`LoginError` subclasses whose message is one line meant for the user; no token
ever appears in one.
"""

from __future__ import annotations

import os
import sys
import time
import webbrowser
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from typing import Any

import globus_sdk
import httpx
from globus_sdk.token_storage import TokenStorageData
from globus_sdk.transport import RetryConfig

from gateway.client.api import GlobusLoginConfig
from gateway.client.tokens import Login, LoginFile

__all__ = [
    "NOT_LOGGED_IN",
    "GlobusTokenAuth",
    "GlobusUnreachable",
    "LoginError",
    "LoginFlow",
    "NotLoggedIn",
    "Session",
    "SessionExpired",
    "can_open_browser",
    "logout",
    "start_login",
]

NOT_LOGGED_IN = "not logged in: run `hearth login --gateway URL`"
SESSION_EXPIRED = "session expired: run `hearth login`"

# A CLI should not sit through the SDK's default five retries with backoff (up to ~30 s).
_RETRY = RetryConfig(max_retries=1, max_sleep=1)


class LoginError(Exception):
    """A sign-in problem, described in one line for the user."""


class NotLoggedIn(LoginError):
    def __init__(self) -> None:
        super().__init__(NOT_LOGGED_IN)


class SessionExpired(LoginError):
    """Globus refused the refresh token (``invalid_grant``): revoked, expired or consent withdrawn."""

    def __init__(self) -> None:
        super().__init__(SESSION_EXPIRED)


class GlobusUnreachable(LoginError):
    """Globus Auth could not be asked, or answered 5xx/429."""


def auth_client(client_id: str) -> globus_sdk.NativeAppAuthClient:
    """The native app's client; ``GLOBUS_SDK_SERVICE_URL_AUTH`` / ``GLOBUS_SDK_ENVIRONMENT`` apply."""
    return globus_sdk.NativeAppAuthClient(client_id, app_name="hearth-cli", retry_config=_RETRY)


@dataclass
class LoginFlow:
    """One sign-in in progress: show :attr:`url`, then :meth:`finish` with the pasted code."""

    gateway: str
    config: GlobusLoginConfig
    client: globus_sdk.NativeAppAuthClient
    url: str

    def finish(self, code: str) -> Login:
        """Exchange the authorization code (with the PKCE verifier) for the gateway's tokens."""
        code = code.strip()
        if not code:
            raise LoginError("no authorization code given")
        try:
            response = self.client.oauth2_exchange_code_for_tokens(code)
        except globus_sdk.GlobusAPIError as exc:
            if exc.http_status < 500 and exc.http_status != 429:
                raise LoginError(f"Globus refused the authorization code ({_oauth_error(exc)})") from None
            raise _unreachable(exc) from None
        except globus_sdk.NetworkError as exc:
            raise _unreachable(exc) from None
        tokens = response.by_resource_server.get(self.config.resource_server)
        if tokens is None:
            raise LoginError(
                f"Globus issued no token for the gateway ({self.config.resource_server}); "
                "check the scope the gateway advertises"
            )
        return Login(self.gateway, self.config.client_id, _record(tokens))


def start_login(gateway: str, config: GlobusLoginConfig, *, label: str, force: bool = False) -> LoginFlow:
    """Begin a native-app flow for the gateway's scopes; `label` names the grant on the consent page."""
    client = auth_client(config.client_id)
    client.oauth2_start_flow(
        requested_scopes=list(config.scopes), refresh_tokens=True, prefill_named_grant=label
    )
    url = client.oauth2_get_authorize_url(
        session_required_policies=list(config.required_policies) or globus_sdk.MISSING,
        prompt="login" if force else globus_sdk.MISSING,
    )
    return LoginFlow(gateway, config, client, url)


class Session:
    """The stored login and a valid access token for it, refreshed and saved as needed."""

    def __init__(self, store: LoginFile) -> None:
        login = store.load()
        if login is None:
            raise NotLoggedIn()
        self.login = login
        self._store = store
        tokens = login.tokens
        self._authorizer: globus_sdk.RefreshTokenAuthorizer | None = None
        if tokens.refresh_token:
            self._authorizer = globus_sdk.RefreshTokenAuthorizer(
                tokens.refresh_token,
                auth_client(login.client_id),
                access_token=tokens.access_token,
                expires_at=tokens.expires_at_seconds,
                on_refresh=self._save,
            )

    @property
    def gateway(self) -> str:
        return self.login.gateway

    def access_token(self) -> str:
        """A token valid for at least another minute (refreshing it first if not)."""
        if self._authorizer is None:  # no refresh token: good until it expires
            if self.login.tokens.expires_at_seconds - 60 <= time.time():
                raise SessionExpired()
            return self.login.tokens.access_token
        try:
            self._authorizer.ensure_valid_token()
        except globus_sdk.GlobusAPIError as exc:
            if exc.http_status in (400, 401) and _oauth_error(exc) in ("invalid_grant", "invalid_token"):
                raise SessionExpired() from None
            if exc.http_status < 500 and exc.http_status != 429:
                raise LoginError(f"Globus refused to refresh the token ({_oauth_error(exc)})") from None
            raise _unreachable(exc) from None
        except globus_sdk.NetworkError as exc:
            raise _unreachable(exc) from None
        except ValueError:  # the SDK's check that a refresh answers with exactly one token
            raise LoginError("Globus answered the refresh with an unexpected set of tokens") from None
        token = self._authorizer.access_token
        assert token is not None  # ensure_valid_token() set it or raised
        return token

    def expire_access_token(self) -> None:
        """Forget that the access token is valid (the gateway refused it): refresh on next use."""
        if self._authorizer is not None:
            self._authorizer.handle_missing_authorization()

    def auth(self) -> GlobusTokenAuth:
        """This session as an ``httpx.Auth`` for :class:`gateway.client.api.GatewayClient`."""
        return GlobusTokenAuth(self)

    def _save(self, response: globus_sdk.OAuthRefreshTokenResponse) -> None:
        tokens = response.by_resource_server.get(self.login.tokens.resource_server)
        if tokens is None:
            return
        assert self._authorizer is not None
        # The authorizer has kept any rotated refresh token; without one, the old one still holds.
        record = _record({**tokens, "refresh_token": self._authorizer.refresh_token})
        self.login = Login(self.login.gateway, self.login.client_id, record)
        self._store.save(self.login)


class GlobusTokenAuth(httpx.Auth):
    """Bearer the session's token; on a 401, refresh once and retry (the token may be revoked early).

    See https://www.python-httpx.org/advanced/authentication/#custom-authentication-schemes.
    """

    def __init__(self, session: Session) -> None:
        self._session = session

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._session.access_token()}"
        response = yield request
        if response.status_code == 401 and self._session.login.tokens.refresh_token:
            self._session.expire_access_token()
            request.headers["Authorization"] = f"Bearer {self._session.access_token()}"
            yield request


def logout(store: LoginFile) -> tuple[str, list[str]]:
    """Revoke the stored tokens and delete the login file: (the gateway, what could not be revoked).

    The file is deleted even when revocation fails (Globus unreachable): the user asked to be
    signed out on this machine, and an unrevoked token still expires on its own.
    """
    login = store.load()
    if login is None:
        raise NotLoggedIn()
    problems = []
    client = auth_client(login.client_id)
    tokens = login.tokens
    try:
        for kind, token in (("access", tokens.access_token), ("refresh", tokens.refresh_token)):
            if not token:
                continue
            try:
                client.oauth2_revoke_token(token)
            except (globus_sdk.GlobusAPIError, globus_sdk.NetworkError) as exc:
                problems.append(f"could not revoke the {kind} token: {_describe(exc)}")
    finally:
        client.close()
        store.delete()
    return login.gateway, problems


def can_open_browser(environ: Mapping[str, str] | None = None) -> bool:
    """Whether a graphical browser can be opened here (not over SSH; on Linux, only with a display).

    ``webbrowser`` would otherwise fall back to a text-mode browser inside the user's terminal.
    """
    env = os.environ if environ is None else environ
    if env.get("SSH_CONNECTION") or env.get("SSH_TTY"):
        return False
    if sys.platform.startswith("linux") and not (env.get("DISPLAY") or env.get("WAYLAND_DISPLAY")):
        return False
    try:
        webbrowser.get()
    except webbrowser.Error:
        return False
    return True


def _record(tokens: dict[str, Any]) -> TokenStorageData:
    return TokenStorageData(
        resource_server=tokens["resource_server"],
        identity_id=None,  # /v1/whoami says who this is; no id_token was asked for
        scope=tokens["scope"],
        access_token=tokens["access_token"],
        refresh_token=tokens.get("refresh_token"),
        expires_at_seconds=int(tokens["expires_at_seconds"]),
        token_type=tokens.get("token_type"),
    )


def _oauth_error(exc: globus_sdk.GlobusAPIError) -> str:
    """The OAuth 2.0 ``error`` (RFC 6749 §5.2), e.g. invalid_grant; else the SDK's code or status."""
    body = exc.raw_json
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    return exc.code or f"HTTP {exc.http_status}"


def _describe(exc: Exception) -> str:
    if isinstance(exc, globus_sdk.GlobusAPIError):
        return f"Globus Auth answered HTTP {exc.http_status} ({_oauth_error(exc)})"
    return "Globus Auth cannot be reached"


def _unreachable(exc: Exception) -> GlobusUnreachable:
    return GlobusUnreachable(f"{_describe(exc)}; try again later")
