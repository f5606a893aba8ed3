"""The gateway client against canned answers (httpx.MockTransport): requests it makes, errors it reads."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import httpx
import pytest

from gateway.client.api import GatewayClient, GatewayError, GlobusLoginConfig, gateway_root

Handler = Callable[[httpx.Request], httpx.Response]


def client(handler: Handler, **kwargs: object) -> GatewayClient:
    return GatewayClient("https://hearth.example.org", transport=httpx.MockTransport(handler), **kwargs)  # type: ignore[arg-type]


def openai_error(status: int, message: str, code: str | None = None, **extra: object) -> httpx.Response:
    body = {
        "error": {"message": message, "type": "invalid_request_error", "param": None, "code": code, **extra}
    }
    return httpx.Response(status, json=body)


@pytest.mark.parametrize(
    ("url", "root"),
    [
        ("https://hearth.example.org", "https://hearth.example.org"),
        ("https://hearth.example.org/", "https://hearth.example.org"),
        ("https://hearth.example.org/v1", "https://hearth.example.org"),
        ("https://hearth.example.org/v1/", "https://hearth.example.org"),
        (" http://127.0.0.1:8000/hearth/v1 ", "http://127.0.0.1:8000/hearth"),
    ],
)
def test_gateway_root(url: str, root: str) -> None:
    assert gateway_root(url) == root


def test_gateway_root_needs_http() -> None:
    with pytest.raises(ValueError, match="not an http"):
        gateway_root("hearth.example.org")


def test_auth_config_sends_no_credential() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200,
            json={
                "object": "auth.config",
                "globus": {
                    "client_id": "native",
                    "resource_server": "rs",
                    "scopes": ["https://auth.globus.org/scopes/rs/inference"],
                    "required_policies": ["p1", "p2"],
                },
            },
        )

    class Bearer(httpx.Auth):
        def auth_flow(self, request: httpx.Request):  # type: ignore[no-untyped-def]
            request.headers["Authorization"] = "Bearer secret"
            yield request

    config = client(handler, auth=Bearer()).auth_config()
    assert config == GlobusLoginConfig(
        "native", "rs", ("https://auth.globus.org/scopes/rs/inference",), ("p1", "p2")
    )
    assert seen[0].url == "https://hearth.example.org/v1/auth/config"
    assert "Authorization" not in seen[0].headers


def test_auth_config_without_globus() -> None:
    config = client(
        lambda r: httpx.Response(200, json={"object": "auth.config", "globus": None})
    ).auth_config()
    assert config is None


def test_auth_config_malformed() -> None:
    with pytest.raises(GatewayError, match="unexpected body"):
        client(lambda r: httpx.Response(200, json={"globus": {"client_id": "x"}})).auth_config()


def test_key_requests() -> None:
    seen: list[tuple[str, str, bytes]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, str(request.url), request.content))
        if request.method == "GET":
            return httpx.Response(200, json={"object": "list", "data": [{"id": "k1"}]})
        return httpx.Response(
            201 if request.method == "POST" else 200, json={"object": "api_key", "id": "k1"}
        )

    api = client(handler)
    api.create_key("laptop", 1_900_000_000)
    assert api.list_keys() == [{"id": "k1"}]
    api.list_keys(everyone=True)
    api.revoke_key("a/b?c")
    assert seen == [
        ("POST", "https://hearth.example.org/v1/keys", b'{"name":"laptop","expires_at":1900000000}'),
        ("GET", "https://hearth.example.org/v1/keys", b""),
        ("GET", "https://hearth.example.org/v1/keys?all=true", b""),
        ("DELETE", "https://hearth.example.org/v1/keys/a%2Fb%3Fc", b""),
    ]


def test_create_key_without_expiry_sends_null() -> None:
    bodies: list[object] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(201, json={"object": "api_key", "id": "k1"})

    client(handler).create_key("ci", None)
    assert bodies == [{"name": "ci", "expires_at": None}]


# --- errors ---------------------------------------------------------------------------------


def test_openai_error_body() -> None:
    api = client(lambda r: openai_error(403, "Listing everyone's keys is for admins.", "admin_only"))
    with pytest.raises(GatewayError) as caught:
        api.list_keys(everyone=True)
    assert (caught.value.status, caught.value.message, caught.value.code) == (
        403,
        "Listing everyone's keys is for admins.",
        "admin_only",
    )
    assert caught.value.reauthenticate is False


def test_globus_auth_requirements_error_asks_to_sign_in_again() -> None:
    """An error that carries Globus's authorization_parameters (a GARE) means: sign in again."""
    params = {"session_required_policies": ["p1"], "session_message": "MFA needed"}
    api = client(
        lambda r: openai_error(
            401, "Sign in again.", "AuthorizationRequired", authorization_parameters=params
        )
    )
    with pytest.raises(GatewayError) as caught:
        api.whoami()
    assert caught.value.reauthenticate is True


def test_error_without_an_openai_body() -> None:
    api = client(lambda r: httpx.Response(502, text="<html>Bad Gateway</html>"))
    with pytest.raises(GatewayError) as caught:
        api.whoami()
    assert caught.value.status == 502
    assert caught.value.message == "https://hearth.example.org/v1/whoami answered HTTP 502 Bad Gateway"


def test_success_that_is_not_json() -> None:
    with pytest.raises(GatewayError, match="not JSON"):
        client(lambda r: httpx.Response(200, text="hello")).whoami()


def test_unreachable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    with pytest.raises(GatewayError) as caught:
        client(handler).whoami()
    assert caught.value.status is None
    assert caught.value.message == "cannot reach https://hearth.example.org: [Errno 111] Connection refused"


def test_timeout() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("read timed out", request=request)

    with pytest.raises(GatewayError, match=re.escape("cannot reach https://hearth.example.org: timed out")):
        client(handler).whoami()
