"""AccessPolicy: Globus facts to a principal or a refusal a person can act on."""

from __future__ import annotations

import time

import pytest
from pydantic import SecretStr

from gateway.auth.globus import Group
from gateway.auth.policy import AccessPolicy, TokenFacts
from gateway.auth.principal import LinkedIdentity
from gateway.config import GlobusSettings, PolicySettings
from gateway.errors import AuthenticationFailed, PermissionDenied

RS = "aaaaaaaa-0000-0000-0000-000000000001"
SCOPE = f"https://auth.globus.org/scopes/{RS}/inference"
GLOBUS = GlobusSettings(client_id=RS, client_secret=SecretStr("s"))
USERS, GPU, ADMINS = "g-users", "g-gpu", "g-admins"
ALICE = LinkedIdentity(id="id-alice", username="alice@anl.gov", identity_provider="Argonne")
ALICE_G = LinkedIdentity(id="id-alice-g", username="alice@gmail.com", identity_provider="Google")


def facts(**overrides: object) -> TokenFacts:
    base: dict[str, object] = {
        "active": True,
        "sub": ALICE.id,
        "username": ALICE.username,
        "client_id": "native",
        "exp": time.time() + 3600,
        "scopes": (SCOPE,),
        "audience": (RS, "hearth"),
        "identities": (ALICE, ALICE_G),
        "session_identities": (ALICE.id,),
        "policies": {},
        "groups": (Group(USERS, "Users"),),
    }
    base.update(overrides)
    return TokenFacts(**base)  # type: ignore[arg-type]


def policy(**rules: object) -> AccessPolicy:
    model_groups = rules.pop("model_groups", None)
    cluster_groups = rules.pop("cluster_groups", None)
    return AccessPolicy(
        PolicySettings(**rules),  # type: ignore[arg-type]
        GLOBUS,
        model_groups=model_groups,  # type: ignore[arg-type]
        cluster_groups=cluster_groups,  # type: ignore[arg-type]
    )


def test_valid_token_admitted_with_identity() -> None:
    p = policy(required_groups=[USERS]).admit_token(facts())
    assert (p.user, p.username, p.auth, p.groups) == (ALICE.id, ALICE.username, "globus", frozenset({USERS}))
    assert [i.username for i in p.linked] == [ALICE.username, ALICE_G.username]
    assert not p.is_admin
    assert p.may_use("any-model")


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"active": False}, "invalid_token"),
        ({"exp": time.time() - 1}, "token_expired"),
        ({"audience": ("someone-else",)}, "invalid_audience"),
        ({"scopes": ("openid",)}, "invalid_audience"),
    ],
)
def test_bad_tokens_are_401(change: dict[str, object], code: str) -> None:
    with pytest.raises(AuthenticationFailed) as info:
        policy().check_token(facts(**change))
    assert info.value.error_code == code


def test_missing_group_names_it() -> None:
    rules = policy(required_groups=[GPU], group_names={GPU: "GPU allocation"})
    with pytest.raises(PermissionDenied) as info:
        rules.admit_token(facts())
    assert info.value.error_code == "group_membership_required"
    assert "'GPU allocation' (g-gpu)" in info.value.message


def test_per_model_and_cluster_groups_block_with_reasons() -> None:
    rules = policy(model_groups={"big": [GPU], "small": [USERS]}, cluster_groups={"aurora": [GPU]})
    p = rules.admit_token(facts())
    assert p.may_use("small")
    assert not p.may_use("big")
    assert p.may_use("unlisted")
    assert "requires membership in the Globus group g-gpu" in (p.refusal("big") or "")
    assert not p.may_use_cluster("aurora")
    assert p.may_use_cluster("polaris")
    assert rules.needs_groups


def test_domain_must_be_used_in_the_session() -> None:
    rules = policy(allowed_domains=["anl.gov"])
    rules.admit_token(facts())  # signed in with alice@anl.gov
    with pytest.raises(PermissionDenied) as info:
        rules.admit_token(facts(session_identities=(ALICE_G.id,)))  # signed in with gmail
    assert info.value.error_code == "session_domain_required"
    assert "alice@anl.gov" in info.value.message
    with pytest.raises(PermissionDenied) as info:
        policy(allowed_domains=["uchicago.edu"]).admit_token(facts())
    assert info.value.error_code == "identity_domain_required"


def test_subdomains_count_lookalikes_do_not() -> None:
    sub = LinkedIdentity(id="id-s", username="bob@cels.anl.gov")
    evil = LinkedIdentity(id="id-e", username="eve@notanl.gov")
    rules = policy(allowed_domains=["anl.gov"])
    rules.admit_token(facts(identities=(sub,), session_identities=(sub.id,), sub=sub.id))
    with pytest.raises(PermissionDenied):
        rules.admit_token(facts(identities=(evil,), session_identities=(evil.id,), sub=evil.id))


def test_failed_authentication_policy_says_sign_in_again() -> None:
    rules = policy(required_policies=["hi-assurance"])
    rules.admit_token(facts(policies={"hi-assurance": True}))
    for evaluated in ({"hi-assurance": False}, {}):
        with pytest.raises(PermissionDenied) as info:
            rules.admit_token(facts(policies=evaluated))
        assert info.value.error_code == "session_policy_required"
        assert "hearth login --force" in info.value.message


def test_service_clients_only_when_listed() -> None:
    client = facts(sub="svc", username="svc@clients.auth.globus.org", client_id="svc", groups=None)
    with pytest.raises(PermissionDenied) as info:
        policy(required_groups=[USERS]).admit_token(client)
    assert info.value.error_code == "client_not_allowed"
    p = policy(required_groups=[USERS], allowed_clients=["svc"], model_groups={"big": [GPU]}).admit_token(
        client
    )
    assert p.user == "svc"
    assert p.may_use("big")


def test_admins_by_identity_linked_identity_or_group() -> None:
    assert policy(admins=[ALICE.id]).admit_token(facts()).is_admin
    assert policy(admins=[ALICE_G.username]).admit_token(facts()).is_admin
    assert policy(admin_groups=[ADMINS]).admit_token(facts(groups=(Group(ADMINS, "A"),))).is_admin
    assert not policy(admin_groups=[ADMINS]).admit_token(facts()).is_admin


def test_key_owner_judged_by_current_groups() -> None:
    rules = policy(required_groups=[USERS], model_groups={"big": [GPU]})
    p = rules.admit_key_owner(ALICE.id, ALICE.username, "key1", [Group(USERS, "Users")])
    assert (p.auth, p.key_id, p.user) == ("api_key", "key1", ALICE.id)
    assert not p.may_use("big")
    with pytest.raises(PermissionDenied) as info:
        rules.admit_key_owner(ALICE.id, ALICE.username, "key1", [])
    assert info.value.error_code == "group_membership_required"
    with pytest.raises(PermissionDenied):
        rules.admit_key_owner("local-owner", None, "key2", None)  # no credential, groups required
    assert policy().admit_key_owner("local-owner", None, "key2", None).user == "local-owner"


def test_facts_round_trip_json() -> None:
    original = facts(policies={"p": True})
    assert TokenFacts.from_json(original.to_json()) == original
    assert TokenFacts.from_json(facts(groups=None).to_json()).groups is None


def test_from_introspection_reads_the_globus_response() -> None:
    data = {
        "active": True,
        "scope": f"{SCOPE} openid",
        "client_id": "native",
        "sub": ALICE.id,
        "username": ALICE.username,
        "name": "Alice",
        "email": "alice@anl.gov",
        "aud": [RS, "hearth"],
        "exp": 2_000_000_000,
        "identity_set_detail": [
            {"sub": ALICE.id, "username": ALICE.username, "identity_provider_display_name": "Argonne"}
        ],
        "session_info": {"session_id": "s", "authentications": {ALICE.id: {"idp": "x", "auth_time": 1}}},
        "policy_evaluations": {"p1": {"evaluation": True}, "p2": {"evaluation": False}},
    }
    f = TokenFacts.from_introspection(data)
    assert f.scopes == (SCOPE, "openid")
    assert f.audience == (RS, "hearth")
    assert f.session_identities == (ALICE.id,)
    assert f.policies == {"p1": True, "p2": False}
    assert f.identities[0].identity_provider == "Argonne"
    assert f.groups is None
    assert TokenFacts.from_introspection({"active": False}) == TokenFacts(active=False)
