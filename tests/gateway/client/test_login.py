"""The native-app flow's authorize URL, the stored session without network, and browser detection.

Refreshing, revoking and the code exchange are tested against the Globus Auth stand-in in
tests/integration/test_login_cli.py.
"""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from globus_sdk.token_storage import TokenStorageData

from gateway.client.api import GlobusLoginConfig
from gateway.client.login import (
    NotLoggedIn,
    Session,
    SessionExpired,
    can_open_browser,
    logout,
    start_login,
)
from gateway.client.tokens import Login, LoginFile

CONFIG = GlobusLoginConfig(
    client_id="native-client-id",
    resource_server="rs-client-id",
    scopes=("https://auth.globus.org/scopes/rs-client-id/inference",),
    required_policies=("policy-a", "policy-b"),
)


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def stored(tmp_path: Path, *, expires_in: int, refresh: str | None = "refresh-1") -> LoginFile:
    store = LoginFile(tmp_path)
    tokens = TokenStorageData(
        resource_server="rs-client-id",
        identity_id=None,
        scope=CONFIG.scopes[0],
        access_token="access-1",
        refresh_token=refresh,
        expires_at_seconds=int(time.time()) + expires_in,
        token_type="Bearer",
    )
    store.save(Login("https://hearth.example.org", "native-client-id", tokens))
    return store


# --- the authorize URL ----------------------------------------------------------------------


def test_authorize_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GLOBUS_SDK_SERVICE_URL_AUTH", raising=False)
    monkeypatch.delenv("GLOBUS_SDK_ENVIRONMENT", raising=False)
    flow = start_login("https://hearth.example.org", CONFIG, label="laptop.example.org")
    url = urlsplit(flow.url)
    assert (url.scheme, url.netloc, url.path) == ("https", "auth.globus.org", "/v2/oauth2/authorize")
    params = query(flow.url)
    assert params["client_id"] == "native-client-id"
    assert params["scope"] == "https://auth.globus.org/scopes/rs-client-id/inference"
    assert params["response_type"] == "code"
    assert params["access_type"] == "offline"  # a refresh token
    assert params["code_challenge_method"] == "S256"  # PKCE
    assert len(params["code_challenge"]) == 43
    assert params["redirect_uri"] == "https://auth.globus.org/v2/web/auth-code"  # shows the code
    assert params["prefill_named_grant"] == "laptop.example.org"
    assert params["session_required_policies"] == "policy-a,policy-b"
    assert "prompt" not in params


def test_force_asks_to_sign_in_again() -> None:
    params = query(start_login("https://hearth.example.org", CONFIG, label="x", force=True).url)
    assert params["prompt"] == "login"
    assert params["session_required_policies"] == "policy-a,policy-b"


def test_no_policies_no_parameter() -> None:
    config = GlobusLoginConfig("native-client-id", "rs-client-id", CONFIG.scopes, ())
    assert "session_required_policies" not in query(start_login("https://g", config, label="x").url)


def test_each_flow_has_its_own_challenge() -> None:
    first = query(start_login("https://g", CONFIG, label="x").url)["code_challenge"]
    second = query(start_login("https://g", CONFIG, label="x").url)["code_challenge"]
    assert first != second


def test_an_empty_code_is_refused() -> None:
    flow = start_login("https://g", CONFIG, label="x")
    with pytest.raises(Exception, match="no authorization code given"):
        flow.finish("  \n")


# --- the stored session, without network ----------------------------------------------------


def test_no_login(tmp_path: Path) -> None:
    with pytest.raises(NotLoggedIn, match=r"^not logged in: run `hearth login --gateway URL`$"):
        Session(LoginFile(tmp_path))
    with pytest.raises(NotLoggedIn):
        logout(LoginFile(tmp_path))


def test_a_fresh_token_is_used_as_it_is(tmp_path: Path) -> None:
    session = Session(stored(tmp_path, expires_in=3600))
    assert session.gateway == "https://hearth.example.org"
    assert session.access_token() == "access-1"


def test_an_expired_token_without_refresh_token_is_an_expired_session(tmp_path: Path) -> None:
    session = Session(stored(tmp_path, expires_in=30, refresh=None))  # within the 60 s margin
    with pytest.raises(SessionExpired, match=r"^session expired: run `hearth login`$"):
        session.access_token()


# --- the browser ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "environ",
    [
        {"SSH_CONNECTION": "10.0.0.1 5555 10.0.0.2 22", "DISPLAY": ":0"},
        {"SSH_TTY": "/dev/pts/3", "DISPLAY": ":0"},
        {},  # Linux without a display: webbrowser would pick a text browser in the terminal
    ],
)
def test_no_browser(environ: dict[str, str]) -> None:
    assert can_open_browser(environ) is False
