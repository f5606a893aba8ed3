"""Globus Auth end to end: a real gateway process, the real globus_sdk inside it, and the
loopback Globus Auth + Groups stand-in speaking the documented wire contract."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import globus_sdk
import httpx
import openai
import pytest
from globus_sdk.gare import is_gare

from tests.support.gateway import Gateway, Sim, start_gateway, start_sim, upstream, wait_for
from tests.support.globus_auth import GlobusAuthStandIn, Identity, ResourceServer

pytestmark = pytest.mark.timeout(120)


@dataclass
class World:
    globus: GlobusAuthStandIn
    rs: ResourceServer
    native: str
    alice: Identity  # anl.gov, member of users; linked gmail identity
    alice_gmail: Identity
    bob: Identity  # gmail, member of users
    carol: Identity  # no groups
    admin: Identity
    users: str
    gpu: str
    policy: str
    svc: tuple[str, str]  # an allowed service client (id, secret)
    other_svc: tuple[str, str]

    def token(self, who: Identity, **kw: Any) -> str:
        return self.globus.issue_token(who, self.rs, **kw)


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with GlobusAuthStandIn() as g:
        rs = g.add_resource_server()
        alice = g.add_identity("alice@anl.gov", name="Alice")
        alice_gmail = g.add_identity("alice@gmail.com")
        g.link(alice, alice_gmail)
        bob = g.add_identity("bob@gmail.com")
        carol = g.add_identity("carol@anl.gov")
        admin = g.add_identity("root@anl.gov")
        users = g.add_group("Inference users", alice, bob, admin)
        gpu = g.add_group("GPU allocation")
        yield World(
            globus=g, rs=rs, native=g.add_native_client(), alice=alice, alice_gmail=alice_gmail, bob=bob,
            carol=carol, admin=admin, users=users, gpu=gpu, policy=g.add_policy(domains=("anl.gov",)),
            svc=g.add_confidential_client(), other_svc=g.add_confidential_client(),
        )  # fmt: skip


def _globus_section(w: World, **extra: Any) -> dict[str, Any]:
    return {
        "client_id": w.rs.client_id,
        "client_secret": w.rs.secret,
        "native_client_id": w.native,
        "auth_url": w.globus.url + "/",
        "groups_url": w.globus.url + "/",
        "timeout_s": 3,
        "negative_cache_ttl_s": 0.5,
        "group_cache_ttl_s": 0.5,
        **extra,
    }


@pytest.fixture(scope="module")
def groups_gateway(
    logs: Path, sim: Sim, world: World, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """Group policy: `users` to enter, `gpu` for the model `big`; one allowed service client."""
    db = tmp_path_factory.mktemp("globus-store") / "hearth.db"
    big = start_sim(logs, model="big-model", ttft_ms=1, itl_ms=1)
    gw = start_gateway(
        logs,
        clusters={"local": {"upstreams": [upstream(sim, "sim"), upstream(big, "big")]}},
        models={
            "small": {"served_name": sim.model},
            "big": {"served_name": big.model, "required_groups": [world.gpu]},
        },
        store_url=f"sqlite:///{db}",
        auth={
            "key_cache_ttl_s": 0.5,
            "negative_cache_ttl_s": 0.5,
            "globus": _globus_section(world),
            "policy": {
                "required_groups": [world.users],
                "allowed_clients": [world.svc[0]],
                "admins": [world.admin.username],
                "group_names": {world.users: "Inference users", world.gpu: "GPU allocation"},
            },
        },
    )
    gw.db_path = db  # type: ignore[attr-defined]
    yield gw
    gw.stop()
    big.proc.stop()


@pytest.fixture(scope="module")
def session_gateway(logs: Path, sim: Sim, world: World, store_url_sqlite: str) -> Iterator[Gateway]:
    """Session rules: an anl.gov sign-in and a passed authentication policy."""
    gw = start_gateway(
        logs,
        clusters={"local": {"upstreams": [upstream(sim, "sim")]}},
        models={"small": {"served_name": sim.model}},
        store_url=store_url_sqlite,
        auth={
            "globus": _globus_section(world),
            "policy": {"allowed_domains": ["anl.gov"], "required_policies": [world.policy]},
        },
    )
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def store_url_sqlite(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('globus-session') / 'hearth.db'}"


def call(gw: Gateway, token: str, model: str = "small") -> httpx.Response:
    return httpx.post(
        f"{gw.url}/chat/completions",
        headers={"Authorization": f"Bearer {token}"},
        json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        timeout=30,
    )


def error(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    err: dict[str, Any] = body["error"]
    return err


# -- tokens


def test_openai_sdk_with_a_globus_token(groups_gateway: Gateway, world: World) -> None:
    client = openai.OpenAI(base_url=groups_gateway.url, api_key=world.token(world.alice))
    reply = client.chat.completions.create(
        model="small", messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    assert reply.choices[0].message.content
    assert sorted(m.id for m in client.models.list()) == ["small"]  # `big` needs the gpu group


def test_whoami_shows_identity_linked_identities_groups_and_models(
    groups_gateway: Gateway, world: World
) -> None:
    r = httpx.get(
        f"{groups_gateway.url}/whoami", headers={"Authorization": f"Bearer {world.token(world.alice)}"}
    )
    assert r.status_code == 200, r.text
    me = r.json()
    assert (me["id"], me["username"], me["auth"], me["is_admin"]) == (
        world.alice.id,
        "alice@anl.gov",
        "globus",
        False,
    )
    assert {i["username"] for i in me["linked_identities"]} == {"alice@anl.gov", "alice@gmail.com"}
    assert me["groups"] == [{"id": world.users, "name": "Inference users"}]
    assert me["models"] == ["small"]
    assert me["clusters"] == ["local"]


def test_cache_one_introspection_for_many_requests(groups_gateway: Gateway, world: World) -> None:
    token = world.token(world.bob)
    world.globus.reset_calls()
    for _ in range(10):
        assert call(groups_gateway, token).status_code == 200
    assert world.globus.calls["introspect"] == 1
    assert world.globus.calls["dependent_token"] == 1
    assert world.globus.calls["my_groups"] == 1


def test_concurrent_lookups_coalesce(groups_gateway: Gateway, world: World) -> None:
    token = world.token(world.bob)
    world.globus.reset_calls()
    world.globus.delay_s = 0.3

    async def burst() -> list[int]:
        async with httpx.AsyncClient(timeout=30) as client:
            body = {"model": "small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
            rs = await asyncio.gather(*(
                client.post(f"{groups_gateway.url}/chat/completions", json=body,
                            headers={"Authorization": f"Bearer {token}"})
                for _ in range(20)
            ))  # fmt: skip
            return [r.status_code for r in rs]

    try:
        assert asyncio.run(burst()) == [200] * 20
    finally:
        world.globus.delay_s = 0.0
    assert world.globus.calls["introspect"] == 1


@pytest.mark.parametrize("how", ["expired", "revoked"])
def test_dead_tokens_are_401(groups_gateway: Gateway, world: World, how: str) -> None:
    token = world.token(world.alice)
    getattr(world.globus, "expire" if how == "expired" else "revoke")(token)
    r = call(groups_gateway, token)
    assert r.status_code == 401
    assert error(r)["code"] == "invalid_token"


def test_token_for_another_resource_server_is_401(groups_gateway: Gateway, world: World) -> None:
    other = world.globus.add_resource_server(scope_suffix="other")
    r = call(groups_gateway, world.globus.issue_token(world.alice, other))
    assert r.status_code == 401
    # Globus itself answers "inactive" to a resource server that is not the token's audience;
    # the gateway checks audience and scope too, in case it does not.
    assert error(r)["code"] in {"invalid_token", "invalid_audience"}


def test_missing_group_is_403_naming_it(groups_gateway: Gateway, world: World) -> None:
    r = call(groups_gateway, world.token(world.carol))
    assert r.status_code == 403
    assert error(r)["code"] == "group_membership_required"
    assert "'Inference users'" in error(r)["message"]


def test_per_model_group(groups_gateway: Gateway, world: World) -> None:
    r = call(groups_gateway, world.token(world.alice), model="big")
    assert r.status_code == 403
    assert "GPU allocation" in error(r)["message"]
    world.globus.add_member(world.gpu, world.alice_gmail)  # through her linked identity
    try:
        assert call(groups_gateway, world.token(world.alice), model="big").status_code == 200
    finally:
        world.globus.remove_member(world.gpu, world.alice_gmail)


def test_service_clients(groups_gateway: Gateway, world: World) -> None:
    def client_token(client_id: str, secret: str) -> str:
        auth = globus_sdk.ConfidentialAppAuthClient(client_id, secret, base_url=world.globus.url + "/")
        tokens = auth.oauth2_client_credentials_tokens(requested_scopes=world.rs.scope)
        return str(tokens.by_resource_server[world.rs.client_id]["access_token"])

    assert call(groups_gateway, client_token(*world.svc), model="big").status_code == 200
    r = call(groups_gateway, client_token(*world.other_svc))
    assert r.status_code == 403
    assert error(r)["code"] == "client_not_allowed"


@pytest.mark.parametrize("failure", ["5xx", "unreachable"])
def test_globus_down_is_503_and_fails_closed(groups_gateway: Gateway, world: World, failure: str) -> None:
    known = world.token(world.bob)
    assert call(groups_gateway, known).status_code == 200  # cached before the outage
    fresh = world.token(world.bob)
    world.globus.failure = failure  # type: ignore[assignment]
    try:
        r = call(groups_gateway, fresh)
        assert r.status_code == 503
        assert error(r)["code"] == "auth_unavailable"
        assert call(groups_gateway, known).status_code == 200  # a verified token rides it out
    finally:
        world.globus.failure = None
    assert call(groups_gateway, fresh).status_code == 200  # 503 was not cached


# -- session rules


def test_wrong_identity_provider_domain(session_gateway: Gateway, world: World) -> None:
    r = call(session_gateway, world.token(world.bob))
    assert r.status_code == 403
    assert error(r)["code"] == "identity_domain_required"
    # Alice has an anl.gov identity, but signed in with gmail this session.
    r = call(session_gateway, world.token(world.alice, session_identities=[world.alice_gmail]))
    assert r.status_code == 403
    assert error(r)["code"] == "session_domain_required"
    assert "alice@anl.gov" in error(r)["message"]
    assert error(r)["authorization_parameters"]["session_required_single_domain"] == ["anl.gov"]
    assert is_gare(error(r))  # what `hearth login` and the Globus SDK act on


def test_failed_authentication_policy(session_gateway: Gateway, world: World) -> None:
    world.globus.set_policy_result(world.policy, world.alice, False)
    try:
        r = call(session_gateway, world.token(world.alice))
        assert r.status_code == 403
        assert error(r)["code"] == "session_policy_required"
        assert "hearth login --force" in error(r)["message"]
        assert error(r)["authorization_parameters"]["session_required_policies"] == [world.policy]
    finally:
        world.globus.set_policy_result(world.policy, world.alice, None)
    assert call(session_gateway, world.token(world.alice)).status_code == 200


# -- self-service keys


def _create_key(gw: Gateway, token: str, **body: Any) -> httpx.Response:
    return httpx.post(
        f"{gw.url}/keys",
        headers={"Authorization": f"Bearer {token}"},
        json={"name": "nightly", **body},
        timeout=30,
    )


def test_key_follows_its_owner_out_of_the_group(groups_gateway: Gateway, world: World) -> None:
    leaver = world.globus.add_identity("dave@anl.gov")
    world.globus.add_member(world.users, leaver)
    r = _create_key(groups_gateway, world.token(leaver))
    assert r.status_code == 201, r.text
    key = r.json()["key"]
    assert r.json()["owner"] == leaver.id
    assert r.json()["owner_username"] == "dave@anl.gov"
    assert call(groups_gateway, key).status_code == 200
    me = httpx.get(f"{groups_gateway.url}/whoami", headers={"Authorization": f"Bearer {key}"}).json()
    assert (me["auth"], me["id"], me["key_id"]) == ("api_key", leaver.id, r.json()["id"])
    world.globus.remove_member(world.users, leaver)
    assert wait_for(lambda: call(groups_gateway, key).status_code == 403, timeout=10)
    assert error(call(groups_gateway, key))["code"] == "group_membership_required"


def test_keys_need_a_globus_sign_in(groups_gateway: Gateway, world: World) -> None:
    r = _create_key(groups_gateway, world.token(world.alice))
    key = r.json()["key"]
    r = _create_key(groups_gateway, key)
    assert r.status_code == 403
    assert error(r)["code"] == "globus_token_required"


def test_revoked_and_expired_keys(groups_gateway: Gateway, world: World) -> None:
    token = world.token(world.alice)
    revoked = _create_key(groups_gateway, token).json()
    assert call(groups_gateway, revoked["key"]).status_code == 200
    r = httpx.delete(
        f"{groups_gateway.url}/keys/{revoked['id']}", headers={"Authorization": f"Bearer {token}"}
    )
    assert r.status_code == 200
    assert r.json()["deleted"] is True
    assert wait_for(lambda: call(groups_gateway, revoked["key"]).status_code == 401, timeout=5)

    expiring = _create_key(groups_gateway, token, expires_at=int(time.time()) + 2).json()
    assert call(groups_gateway, expiring["key"]).status_code == 200
    assert wait_for(lambda: call(groups_gateway, expiring["key"]).status_code == 401, timeout=10)
    past = _create_key(groups_gateway, token, expires_at=int(time.time()) - 5)
    assert past.status_code == 400
    assert error(past)["param"] == "expires_at"


def test_keys_are_private_except_to_admins(groups_gateway: Gateway, world: World) -> None:
    alice, bob, admin = (world.token(i) for i in (world.alice, world.bob, world.admin))
    mine = _create_key(groups_gateway, alice).json()
    listed = httpx.get(f"{groups_gateway.url}/keys", headers={"Authorization": f"Bearer {bob}"}).json()
    assert mine["id"] not in {k["id"] for k in listed["data"]}
    r = httpx.get(
        f"{groups_gateway.url}/keys", params={"all": "true"}, headers={"Authorization": f"Bearer {bob}"}
    )
    assert r.status_code == 403
    r = httpx.delete(f"{groups_gateway.url}/keys/{mine['id']}", headers={"Authorization": f"Bearer {bob}"})
    assert r.status_code == 404  # not 403: ids do not leak
    everyone = httpx.get(
        f"{groups_gateway.url}/keys", params={"all": "true"}, headers={"Authorization": f"Bearer {admin}"}
    ).json()
    assert mine["id"] in {k["id"] for k in everyone["data"]}
    assert "key" not in everyone["data"][0]
    r = httpx.delete(f"{groups_gateway.url}/keys/{mine['id']}", headers={"Authorization": f"Bearer {admin}"})
    assert r.status_code == 200


def test_audit_log_and_no_secrets_in_logs(groups_gateway: Gateway, world: World, logs: Path) -> None:
    token = world.token(world.alice)
    created = _create_key(groups_gateway, token).json()
    assert call(groups_gateway, world.token(world.carol)).status_code == 403
    httpx.delete(f"{groups_gateway.url}/keys/{created['id']}", headers={"Authorization": f"Bearer {token}"})

    def rows() -> list[tuple[str, str, str, str | None]]:
        with sqlite3.connect(groups_gateway.db_path) as db:  # type: ignore[attr-defined]
            return db.execute("SELECT actor, action, outcome, target FROM audit_events").fetchall()

    assert wait_for(lambda: (world.alice.id, "key.revoke", "ok", created["id"]) in rows(), timeout=5)
    assert (world.alice.id, "key.create", "ok", created["id"]) in rows()
    assert any(r[:3] == (world.carol.id, "auth.token", "deny") for r in rows())
    text = "".join(p.read_text(errors="replace") for p in logs.glob("gateway-*.log"))
    assert token not in text
    assert created["key"] not in text
    assert world.rs.secret not in text
    with sqlite3.connect(groups_gateway.db_path) as db:  # type: ignore[attr-defined]
        dump = "\n".join(db.iterdump())
    assert token not in dump
    assert created["key"] not in dump


def test_auth_config_for_hearth_login(groups_gateway: Gateway, world: World) -> None:
    body = httpx.get(f"{groups_gateway.url}/auth/config").json()
    assert body["globus"] == {
        "client_id": world.native,
        "resource_server": world.rs.client_id,
        "scopes": [world.rs.scope],
        "required_policies": [],
    }


def test_replicas_share_the_token_cache_through_redis(
    logs: Path, sim: Sim, world: World, store_url_sqlite: str
) -> None:
    config = {
        "clusters": {"local": {"upstreams": [upstream(sim, "sim")]}},
        "models": {"small": {"served_name": sim.model}},
        "store_url": store_url_sqlite,
        "redis": {"url": "redis://127.0.0.1:6379/0"},
        "auth": {"globus": _globus_section(world), "policy": {"required_groups": [world.users]}},
    }
    first = start_gateway(logs, **config)  # type: ignore[arg-type]
    second = start_gateway(logs, **config)  # type: ignore[arg-type]
    try:
        token = world.token(world.bob)
        world.globus.reset_calls()
        assert call(first, token).status_code == 200
        assert call(second, token).status_code == 200
        assert world.globus.calls["introspect"] == 1
        assert world.globus.calls["my_groups"] == 1
    finally:
        first.stop()
        second.stop()
