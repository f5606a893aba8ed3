"""The Globus Auth + Groups stand-in, driven by the real globus_sdk clients over loopback HTTP."""

from __future__ import annotations

import threading
import time
from typing import Any
from urllib.parse import parse_qs, urlparse

import globus_sdk
import httpx
import pytest
from globus_sdk.transport import RetryConfig

from tests.support.globus_auth import (
    GROUPS_RESOURCE_SERVER,
    GROUPS_SCOPE,
    GlobusAuthStandIn,
    Identity,
    ResourceServer,
)

NO_RETRIES = RetryConfig(max_retries=0)


def confidential(stand_in: GlobusAuthStandIn, rs: ResourceServer) -> globus_sdk.ConfidentialAppAuthClient:
    return globus_sdk.ConfidentialAppAuthClient(rs.client_id, rs.secret, base_url=stand_in.url + "/")


def groups_client(stand_in: GlobusAuthStandIn, token: str) -> globus_sdk.GroupsClient:
    authorizer = globus_sdk.AccessTokenAuthorizer(token)
    return globus_sdk.GroupsClient(
        authorizer=authorizer, base_url=stand_in.url + "/", retry_config=NO_RETRIES
    )


def introspect_with_policies(
    client: globus_sdk.ConfidentialAppAuthClient, token: str, *policies: str
) -> globus_sdk.GlobusHTTPResponse:
    """oauth2_token_introspect() has no `authentication_policies`: post the form, as FIRST does."""
    body = {"token": token, "include": "session_info", "authentication_policies": ",".join(policies)}
    return client.post("/v2/oauth2/token/introspect", data=body, encoding="form")


def sign_in(
    stand_in: GlobusAuthStandIn, client: globus_sdk.NativeAppAuthClient, **authorize: Any
) -> httpx.Response:
    """The browser step: fetch the authorize URL without following the redirect."""
    return httpx.get(client.oauth2_get_authorize_url(**authorize), follow_redirects=False)


def code_from(response: httpx.Response) -> str:
    assert response.status_code == 302, response.text
    return parse_qs(urlparse(response.headers["location"]).query)["code"][0]


@pytest.fixture
def alice(globus_auth: GlobusAuthStandIn) -> tuple[Identity, Identity]:
    """Alice's institutional identity (primary) linked to her gmail identity."""
    anl = globus_auth.add_identity(
        "alice@anl.gov", name="Alice Liddell", idp_name="Argonne National Laboratory"
    )
    gmail = globus_auth.add_identity("alice.l@gmail.com")
    globus_auth.link(anl, gmail)
    return anl, gmail


def test_introspection_reports_subject_identity_set_and_session(
    globus_auth: GlobusAuthStandIn, alice: tuple[Identity, Identity]
) -> None:
    anl, gmail = alice
    rs = globus_auth.add_resource_server()
    token = globus_auth.issue_token(gmail, rs)  # signed in with gmail: sub is still the primary

    data = confidential(globus_auth, rs).oauth2_token_introspect(
        token, include="session_info,identity_set_detail,identity_set"
    )

    assert data["active"] is True
    assert (data["sub"], data["username"], data["name"]) == (anl.id, "alice@anl.gov", "Alice Liddell")
    assert data["aud"] == [rs.client_id]
    assert data["scope"] == rs.scope
    assert data["iss"] == "https://auth.globus.org"
    assert data["client_id"] == globus_auth.default_client_id
    assert data["exp"] > time.time() > data["iat"] - 5
    assert data["identity_set"] == [anl.id, gmail.id]
    detail = {d["username"]: d for d in data["identity_set_detail"]}
    assert detail["alice@anl.gov"]["identity_provider_display_name"] == "Argonne National Laboratory"
    assert detail["alice@anl.gov"]["last_authentication"] is None
    assert detail["alice.l@gmail.com"]["status"] == "used"
    authentications = data["session_info"]["authentications"]
    assert list(authentications) == [gmail.id]
    assert authentications[gmail.id]["idp"] == gmail.identity_provider
    assert "policy_evaluations" not in data


def test_clients_reach_the_stand_in_through_the_sdk_environment(
    globus_auth: GlobusAuthStandIn, alice: tuple[Identity, Identity], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in globus_auth.env.items():
        monkeypatch.setenv(name, value)
    rs = globus_auth.add_resource_server()
    group = globus_auth.add_group("hearth-users", alice[0])
    token = globus_auth.issue_token(alice[0], rs)

    auth = globus_sdk.ConfidentialAppAuthClient(rs.client_id, rs.secret)
    assert auth.oauth2_token_introspect(token)["active"] is True
    groups_token = auth.oauth2_get_dependent_tokens(token).by_resource_server[GROUPS_RESOURCE_SERVER]
    groups = globus_sdk.GroupsClient(
        authorizer=globus_sdk.AccessTokenAuthorizer(groups_token["access_token"])
    )
    assert [g["id"] for g in groups.get_my_groups()] == [group]


def test_inactive_tokens_and_foreign_audiences(
    globus_auth: GlobusAuthStandIn, alice: tuple[Identity, Identity]
) -> None:
    rs, other = globus_auth.add_resource_server(), globus_auth.add_resource_server()
    client = confidential(globus_auth, rs)
    expired, revoked, by_sdk = (globus_auth.issue_token(alice[0], rs) for _ in range(3))
    globus_auth.expire(expired)
    globus_auth.revoke(revoked)
    assert client.oauth2_revoke_token(by_sdk)["active"] is False

    for token in ("not-a-token", expired, revoked, by_sdk, globus_auth.issue_token(alice[0], other)):
        assert client.oauth2_token_introspect(token).data == {"active": False}
    assert globus_auth.calls["introspect"] == 5
    assert globus_auth.calls["revoke"] == 1


def test_wrong_client_secret_is_invalid_client(globus_auth: GlobusAuthStandIn) -> None:
    rs = globus_auth.add_resource_server()
    client = globus_sdk.ConfidentialAppAuthClient(rs.client_id, "wrong", base_url=globus_auth.url + "/")
    with pytest.raises(globus_sdk.AuthAPIError) as caught:
        client.oauth2_token_introspect(globus_auth.issue_token(globus_auth.add_identity("a@b.org"), rs))
    assert (caught.value.http_status, caught.value.raw_json["error"]) == (401, "invalid_client")  # type: ignore[index]


def test_policies_follow_session_domains_timeouts_and_overrides(
    globus_auth: GlobusAuthStandIn, alice: tuple[Identity, Identity]
) -> None:
    anl, gmail = alice
    rs = globus_auth.add_resource_server()
    client = confidential(globus_auth, rs)
    ha = globus_auth.add_policy(domains=("*anl.gov",), session_timeout_s=3600)
    linked = globus_auth.add_policy(high_assurance=False, domains=("anl.gov",))

    def evaluations(token: str) -> dict[str, bool]:
        data = introspect_with_policies(client, token, ha, linked)
        return {p: e["evaluation"] for p, e in data["policy_evaluations"].items()}

    assert evaluations(globus_auth.issue_token(anl, rs)) == {ha: True, linked: True}
    by_gmail = globus_auth.issue_token(gmail, rs)
    assert evaluations(by_gmail) == {ha: False, linked: True}
    stale = globus_auth.issue_token(anl, rs, auth_time=int(time.time()) - 7200)
    assert evaluations(stale) == {ha: False, linked: True}

    globus_auth.set_policy_result(ha, gmail, True)
    assert evaluations(by_gmail)[ha] is True
    globus_auth.set_policy_result(ha, gmail, None)
    assert evaluations(by_gmail)[ha] is False

    with pytest.raises(globus_sdk.AuthAPIError) as caught:
        introspect_with_policies(client, by_gmail, "no-such-policy")
    assert caught.value.http_status == 400


def test_dependent_groups_token_lists_the_identity_sets_groups(
    globus_auth: GlobusAuthStandIn, alice: tuple[Identity, Identity]
) -> None:
    anl, gmail = alice
    rs = globus_auth.add_resource_server()
    users = globus_auth.add_group("hearth-users", gmail)
    admins = globus_auth.add_group("hearth-admins", anl, gmail)
    globus_auth.add_group("strangers", globus_auth.add_identity("bob@uchicago.edu"))
    client = confidential(globus_auth, rs)

    tokens = client.oauth2_get_dependent_tokens(
        globus_auth.issue_token(anl, rs), additional_params={"access_type": "offline"}
    )

    groups = tokens.by_resource_server[GROUPS_RESOURCE_SERVER]
    assert groups["scope"] == GROUPS_SCOPE
    assert groups["refresh_token"]
    mine = {g["id"]: g for g in groups_client(globus_auth, groups["access_token"]).get_my_groups()}
    assert set(mine) == {users, admins}
    assert {m["identity_id"] for m in mine[admins]["my_memberships"]} == {anl.id, gmail.id}
    assert mine[users]["my_memberships"][0] | {"group_id": users} == {
        "group_id": users,
        "identity_id": gmail.id,
        "username": "alice.l@gmail.com",
        "role": "member",
        "status": "active",
    }

    globus_auth.remove_member(users, gmail)
    assert [g["id"] for g in groups_client(globus_auth, groups["access_token"]).get_my_groups()] == [admins]
    assert (globus_auth.calls["dependent_token"], globus_auth.calls["my_groups"]) == (1, 2)


def test_dependent_tokens_need_a_token_for_the_caller(
    globus_auth: GlobusAuthStandIn, alice: tuple[Identity, Identity]
) -> None:
    rs, other = globus_auth.add_resource_server(), globus_auth.add_resource_server()
    with pytest.raises(globus_sdk.AuthAPIError) as caught:
        confidential(globus_auth, rs).oauth2_get_dependent_tokens(globus_auth.issue_token(alice[0], other))
    assert (caught.value.http_status, caught.value.raw_json["error"]) == (400, "invalid_grant")  # type: ignore[index]


def test_groups_refuse_inactive_and_non_groups_tokens(
    globus_auth: GlobusAuthStandIn, alice: tuple[Identity, Identity]
) -> None:
    rs = globus_auth.add_resource_server()
    expired = globus_auth.issue_token(alice[0], GROUPS_RESOURCE_SERVER)
    globus_auth.expire(expired)
    for token in (expired, globus_auth.issue_token(alice[0], rs)):
        with pytest.raises(globus_sdk.GroupsAPIError) as caught:
            groups_client(globus_auth, token).get_my_groups()
        assert (caught.value.http_status, caught.value.code) == (401, "AUTHENTICATION_ERROR")


def test_refresh_token_authorizer_renews_and_revocation_ends_it(
    globus_auth: GlobusAuthStandIn, alice: tuple[Identity, Identity]
) -> None:
    rs = globus_auth.add_resource_server()
    group = globus_auth.add_group("hearth-users", alice[0])
    client = confidential(globus_auth, rs)
    tokens = client.oauth2_get_dependent_tokens(globus_auth.issue_token(alice[0], rs), refresh_tokens=True)
    refresh_token = tokens.by_resource_server[GROUPS_RESOURCE_SERVER]["refresh_token"]

    authorizer = globus_sdk.RefreshTokenAuthorizer(refresh_token, client)  # no access token yet: refreshes
    groups = globus_sdk.GroupsClient(authorizer=authorizer, base_url=globus_auth.url + "/")
    assert [g["id"] for g in groups.get_my_groups()] == [group]
    renewed = client.oauth2_refresh_token(refresh_token)
    assert renewed["refresh_token"] == refresh_token  # Globus hands back the same refresh token
    assert renewed["other_tokens"] == []
    assert globus_auth.calls["refresh_token"] == 2

    client.oauth2_revoke_token(refresh_token)
    with pytest.raises(globus_sdk.AuthAPIError) as caught:
        client.oauth2_refresh_token(refresh_token)
    assert (caught.value.http_status, caught.value.raw_json["error"]) == (400, "invalid_grant")  # type: ignore[index]
    with pytest.raises(globus_sdk.GroupsAPIError):  # the access token minted from it died with it
        groups_client(globus_auth, renewed["access_token"]).get_my_groups()


def test_native_app_login_with_pkce(globus_auth: GlobusAuthStandIn, alice: tuple[Identity, Identity]) -> None:
    anl, gmail = alice
    rs = globus_auth.add_resource_server()
    policy = globus_auth.add_policy(domains=("anl.gov",))
    app = globus_sdk.NativeAppAuthClient(globus_auth.add_native_client(), base_url=globus_auth.url + "/")
    app.oauth2_start_flow(requested_scopes=[rs.scope, GROUPS_SCOPE, "profile"], refresh_tokens=True)
    globus_auth.browser_user = gmail

    code = code_from(sign_in(globus_auth, app, session_required_policies=[policy]))
    tokens = app.oauth2_exchange_code_for_tokens(code)

    assert tokens["resource_server"] == rs.client_id  # the first resource server asked for
    assert tokens["state"] == "_default"
    assert set(tokens.by_resource_server) == {rs.client_id, GROUPS_RESOURCE_SERVER, "auth.globus.org"}
    assert all(t["refresh_token"] for t in tokens.by_resource_server.values())
    asked = globus_auth.authorize_requests[-1]
    assert (asked["session_required_policies"], asked["code_challenge_method"]) == (policy, "S256")
    data = introspect_with_policies(confidential(globus_auth, rs), tokens["access_token"], policy)
    assert data["sub"] == anl.id
    assert data["client_id"] == app.client_id
    assert list(data["session_info"]["authentications"]) == [gmail.id]
    assert data["policy_evaluations"] == {policy: {"evaluation": True}}  # the re-login asked for it

    with pytest.raises(globus_sdk.AuthAPIError) as caught:  # codes are single-use
        app.oauth2_exchange_code_for_tokens(code)
    assert caught.value.http_status == 400

    refreshed = app.oauth2_refresh_token(tokens["refresh_token"])  # a native app: client_id in the form
    assert refreshed["resource_server"] == rs.client_id
    assert app.oauth2_revoke_token(refreshed["access_token"])["active"] is False
    assert (globus_auth.calls["authorization_code"], globus_auth.calls["authorize"]) == (2, 1)


def test_a_code_needs_the_verifier_of_its_own_flow(
    globus_auth: GlobusAuthStandIn, alice: tuple[Identity, Identity]
) -> None:
    rs = globus_auth.add_resource_server()
    app = globus_sdk.NativeAppAuthClient(globus_auth.add_native_client(), base_url=globus_auth.url + "/")
    app.oauth2_start_flow(requested_scopes=rs.scope)
    globus_auth.browser_user = alice[0]
    code = code_from(sign_in(globus_auth, app))
    app.oauth2_start_flow(requested_scopes=rs.scope)  # a new verifier

    with pytest.raises(globus_sdk.AuthAPIError) as caught:
        app.oauth2_exchange_code_for_tokens(code)
    assert (caught.value.http_status, caught.value.raw_json["error"]) == (400, "invalid_grant")  # type: ignore[index]


def test_authorize_needs_a_signed_in_browser_and_known_scopes(
    globus_auth: GlobusAuthStandIn, alice: tuple[Identity, Identity]
) -> None:
    rs = globus_auth.add_resource_server()
    app = globus_sdk.NativeAppAuthClient(globus_auth.add_native_client(), base_url=globus_auth.url + "/")
    app.oauth2_start_flow(requested_scopes=rs.scope)
    assert sign_in(globus_auth, app).status_code == 403

    globus_auth.browser_user = alice[0]
    app.oauth2_start_flow(requested_scopes=["openid", rs.scope])
    refused = sign_in(globus_auth, app)
    assert (refused.status_code, refused.json()["error"]) == (400, "invalid_scope")


def test_client_credentials_act_as_the_client_identity(globus_auth: GlobusAuthStandIn) -> None:
    rs = globus_auth.add_resource_server()
    service_id, service_secret = globus_auth.add_confidential_client()
    service = globus_sdk.ConfidentialAppAuthClient(service_id, service_secret, base_url=globus_auth.url + "/")

    token = service.oauth2_client_credentials_tokens(rs.scope).by_resource_server[rs.client_id][
        "access_token"
    ]

    data = confidential(globus_auth, rs).oauth2_token_introspect(token, include="session_info")
    assert (data["sub"], data["username"]) == (service_id, f"{service_id}@clients.auth.globus.org")
    assert data["session_info"]["authentications"] == {}
    assert globus_auth.client_identity(service_id).id == service_id


def test_failure_modes_and_recovery_on_the_same_port(
    globus_auth: GlobusAuthStandIn, alice: tuple[Identity, Identity]
) -> None:
    rs = globus_auth.add_resource_server()
    token = globus_auth.issue_token(alice[0], rs)
    fast = globus_sdk.ConfidentialAppAuthClient(
        rs.client_id, rs.secret, base_url=globus_auth.url + "/", retry_config=NO_RETRIES
    )
    url = globus_auth.url

    globus_auth.failure = "5xx"
    with pytest.raises(globus_sdk.GlobusAPIError) as caught:
        fast.oauth2_token_introspect(token)
    assert caught.value.http_status == 503
    globus_auth.reset_calls()
    retrying = globus_sdk.ConfidentialAppAuthClient(
        rs.client_id,
        rs.secret,
        base_url=url + "/",
        retry_config=RetryConfig(max_retries=2, backoff=lambda _: 0),
    )
    with pytest.raises(globus_sdk.GlobusAPIError):
        retrying.oauth2_token_introspect(token)
    assert globus_auth.calls["introspect"] == 3  # the first try and two retries

    globus_auth.failure = "unreachable"
    with pytest.raises(globus_sdk.NetworkError):
        fast.oauth2_token_introspect(token)

    globus_auth.failure = None
    assert globus_auth.url == url
    assert fast.oauth2_token_introspect(token)["active"] is True
    globus_auth.stop()
    globus_auth.start()
    assert (globus_auth.url, fast.oauth2_token_introspect(token)["active"]) == (url, True)


def test_delay_applies_to_concurrent_calls_at_once(
    globus_auth: GlobusAuthStandIn, alice: tuple[Identity, Identity]
) -> None:
    rs = globus_auth.add_resource_server()
    token = globus_auth.issue_token(alice[0], rs)
    globus_auth.delay_s = 0.3
    results: list[bool] = []

    def introspect() -> None:
        results.append(confidential(globus_auth, rs).oauth2_token_introspect(token)["active"])

    started = time.monotonic()
    threads = [threading.Thread(target=introspect) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert 0.3 <= time.monotonic() - started < 1.0
    assert results == [True] * 4
