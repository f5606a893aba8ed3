"""The admin's access policy, applied to what Globus says about a caller. No I/O here.

Order of the checks, each with an answer a person can act on:

1. the token itself (401): active, not expired, issued for this gateway (audience and scope);
2. service clients (403 unless listed in ``policy.allowed_clients``, which are trusted with
   every model and cluster: they have no identity-provider session and no group memberships);
3. identity-provider domain (403): the *session* must have authenticated an identity of an
   allowed domain — a linked identity that was not used to sign in is not enough;
4. authentication policies (403): every required policy must evaluate true for the session
   (high-assurance policies expire: the user signs in again);
5. groups (403): membership in any of ``policy.required_groups``; per model and per cluster
   ``required_groups`` become ``Principal.blocked_models`` / ``blocked_clusters`` with reasons.

API keys act as their owner: groups are re-read through the owner's kept Groups credential,
so a key loses access when its owner leaves a group. Domains and authentication policies are
properties of an interactive session; they are checked when the key is created.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from types import MappingProxyType
from typing import Any

from gateway.auth.globus import Group
from gateway.auth.principal import LinkedIdentity, Principal
from gateway.config import GlobusSettings, PolicySettings
from gateway.errors import AuthenticationFailed, PermissionDenied

__all__ = ["AccessPolicy", "TokenFacts"]

CLIENT_IDENTITY_SUFFIX = "@clients.auth.globus.org"


@dataclass(frozen=True, slots=True)
class TokenFacts:
    """What Globus said about one access token; cacheable (JSON) under the token's digest."""

    active: bool
    sub: str = ""
    username: str = ""
    name: str | None = None
    email: str | None = None
    client_id: str = ""
    exp: float = 0.0
    scopes: tuple[str, ...] = ()
    audience: tuple[str, ...] = ()
    identities: tuple[LinkedIdentity, ...] = ()
    session_identities: tuple[str, ...] = ()  # identity ids authenticated in this session
    policies: Mapping[str, bool] = field(default_factory=dict)
    groups: tuple[Group, ...] | None = None  # None: not looked up (no group policy)

    @classmethod
    def from_introspection(cls, data: Mapping[str, Any]) -> TokenFacts:
        if not data.get("active"):
            return cls(active=False)
        aud = data.get("aud") or ()
        identities = tuple(
            LinkedIdentity(
                id=i["sub"],
                username=i.get("username") or i["sub"],
                name=i.get("name"),
                email=i.get("email"),
                identity_provider=i.get("identity_provider_display_name"),
            )
            for i in data.get("identity_set_detail") or ()
        )
        session = (data.get("session_info") or {}).get("authentications") or {}
        evaluations = data.get("policy_evaluations") or {}
        return cls(
            active=True,
            sub=str(data.get("sub") or ""),
            username=str(data.get("username") or ""),
            name=data.get("name"),
            email=data.get("email"),
            client_id=str(data.get("client_id") or ""),
            exp=float(data.get("exp") or 0),
            scopes=tuple(str(data.get("scope") or "").split()),
            audience=(aud,) if isinstance(aud, str) else tuple(aud),
            identities=identities,
            session_identities=tuple(session),
            policies={pid: bool((ev or {}).get("evaluation")) for pid, ev in evaluations.items()},
        )

    def with_groups(self, groups: Iterable[Group]) -> TokenFacts:
        return TokenFacts(**{**self._fields(), "groups": tuple(groups)})

    def to_json(self) -> dict[str, Any]:
        out = self._fields()
        out["identities"] = [asdict(i) for i in self.identities]
        out["groups"] = None if self.groups is None else [asdict(g) for g in self.groups]
        out["policies"] = dict(self.policies)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TokenFacts:
        d = dict(data)
        d["scopes"] = tuple(d.get("scopes") or ())
        d["audience"] = tuple(d.get("audience") or ())
        d["session_identities"] = tuple(d.get("session_identities") or ())
        d["identities"] = tuple(LinkedIdentity(**i) for i in d.get("identities") or ())
        groups = d.get("groups")
        d["groups"] = None if groups is None else tuple(Group(**g) for g in groups)
        return cls(**d)

    def _fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @property
    def is_client(self) -> bool:
        return self.username.endswith(CLIENT_IDENTITY_SUFFIX)


class AccessPolicy:
    """The configured rules; turns Globus facts into a `Principal` or a precise refusal."""

    def __init__(
        self,
        policy: PolicySettings,
        globus: GlobusSettings | None,
        *,
        model_groups: Mapping[str, list[str]] | None = None,
        cluster_groups: Mapping[str, list[str]] | None = None,
        other_groups: Iterable[str] = (),
    ) -> None:
        """`other_groups`: groups other parts of the gateway ask about (limits per group)."""
        self._policy = policy
        self._globus = globus
        self._model_groups = {m: frozenset(g) for m, g in (model_groups or {}).items() if g}
        self._cluster_groups = {c: frozenset(g) for c, g in (cluster_groups or {}).items() if g}
        self._required = frozenset(policy.required_groups)
        self._admin_groups = frozenset(policy.admin_groups)
        self._admins = frozenset(policy.admins)
        self._domains = tuple(d.lower().lstrip("@") for d in policy.allowed_domains)
        self.cared_groups = (
            self._required
            | self._admin_groups
            | frozenset().union(*self._model_groups.values(), *self._cluster_groups.values())
            | frozenset(other_groups)
        )

    @property
    def needs_groups(self) -> bool:
        """Whether any rule depends on group membership (else Groups is never asked)."""
        return bool(self.cared_groups)

    def check_token(self, facts: TokenFacts, now: float | None = None) -> None:
        """401 unless the token is alive and was issued for this gateway."""
        if not facts.active:
            raise AuthenticationFailed(
                "The access token is not active (expired, revoked or unknown). "
                "Get a new one with `hearth login`.",
                code="invalid_token",
            )
        if facts.exp and facts.exp <= (time.time() if now is None else now):
            raise AuthenticationFailed(
                "The access token has expired. Get a new one with `hearth token`.", code="token_expired"
            )
        assert self._globus is not None
        if self._globus.client_id not in facts.audience or self._globus.required_scope not in facts.scopes:
            raise AuthenticationFailed(
                "The access token was not issued for this gateway: request the scope "
                f"{self._globus.required_scope}.",
                code="invalid_audience",
            )

    def admit_token(self, facts: TokenFacts) -> Principal:
        """The principal for a checked token, or 403 with the reason."""
        if facts.is_client:
            if (
                facts.sub not in self._policy.allowed_clients
                and facts.client_id not in self._policy.allowed_clients
            ):
                raise PermissionDenied(
                    f"The service client {facts.client_id or facts.sub} is not allowed to use this gateway; "
                    "ask its admins to add it to auth.policy.allowed_clients.",
                    code="client_not_allowed",
                )
            return self._principal(facts.sub, facts.username, facts, groups=(), client=True)
        self._check_domain(facts)
        self._check_policies(facts)
        groups = facts.groups or ()
        self._check_required(groups)
        return self._principal(facts.sub, facts.username, facts, groups=groups)

    def admit_key_owner(
        self, owner: str, username: str | None, key_id: str, groups: Iterable[Group] | None
    ) -> Principal:
        """The principal an API key acts as, judged by its owner's current groups.

        ``groups`` None means the owner's memberships are unknown (a key made on the gateway
        host by an admin, with no Globus credential): only group-free rules can admit it.
        """
        known = tuple(groups or ())
        if groups is None and self._required:
            raise PermissionDenied(
                f"This API key's owner ({username or owner}) has no Globus group information; "
                "create keys with `hearth keys create` after `hearth login`.",
                code="group_membership_required",
            )
        self._check_required(known)
        principal = self._principal(owner, username, None, groups=known)
        return replace(principal, auth="api_key", key_id=key_id)

    # -- the checks

    def _check_domain(self, facts: TokenFacts) -> None:
        if not self._domains:
            return
        by_id = {i.id: i for i in facts.identities}
        used = [by_id[i].username for i in facts.session_identities if i in by_id]
        if any(self._allowed_domain(u) for u in used):
            return
        allowed = ", ".join(self._domains)
        linked = [i for i in facts.identities if self._allowed_domain(i.username)]
        if linked:
            raise PermissionDenied(
                f"Sign in again with your {linked[0].username} identity ({_domain(linked[0].username)}): "
                f"this gateway requires a session authenticated with {allowed}. "
                "Run `hearth login --force`.",
                code="session_domain_required",
                extra=_reauthenticate(
                    f"Sign in with an identity from {allowed}.",
                    session_required_single_domain=list(self._domains),
                ),
            )
        raise PermissionDenied(
            f"This gateway requires an identity from {allowed}; link one at "
            "https://app.globus.org/account/identities and sign in with it.",
            code="identity_domain_required",
        )

    def _check_policies(self, facts: TokenFacts) -> None:
        for policy_id in self._policy.required_policies:
            if not facts.policies.get(policy_id, False):
                raise PermissionDenied(
                    f"Sign in again: your Globus session does not satisfy the authentication policy "
                    f"{policy_id} (high-assurance sessions expire). Run `hearth login --force`.",
                    code="session_policy_required",
                    extra=_reauthenticate(
                        "Sign in again to satisfy this gateway's authentication policy.",
                        session_required_policies=[policy_id],
                    ),
                )

    def _check_required(self, groups: Iterable[Group]) -> None:
        if self._required and not self._required & {g.id for g in groups}:
            raise PermissionDenied(
                f"This gateway requires membership in {self._describe(self._required)}.",
                code="group_membership_required",
            )

    # -- building the principal

    def _principal(
        self,
        user: str,
        username: str | None,
        facts: TokenFacts | None,
        *,
        groups: Iterable[Group],
        client: bool = False,
    ) -> Principal:
        member = {g.id: g.name for g in groups if g.id in self.cared_groups}
        ids = frozenset(member)
        names = {user, *([username] if username else [])}
        if facts is not None:
            names |= {i.id for i in facts.identities} | {i.username for i in facts.identities}
        blocked_models: dict[str, str] = {}
        blocked_clusters: dict[str, str] = {}
        if not client:
            for model, needed in self._model_groups.items():
                if not needed & ids:
                    blocked_models[model] = (
                        f"The model `{model}` requires membership in {self._describe(needed)}."
                    )
            for cluster, needed in self._cluster_groups.items():
                if not needed & ids:
                    blocked_clusters[cluster] = (
                        f"The cluster `{cluster}` requires membership in {self._describe(needed)}."
                    )
        primary = next((i for i in facts.identities if i.id == user), None) if facts else None
        return Principal(
            user=user,
            auth="globus",
            username=username,
            name=facts.name if facts else None,
            email=facts.email if facts else None,
            identity_provider=primary.identity_provider if primary else None,
            linked=facts.identities if facts else (),
            groups=ids,
            group_names=MappingProxyType(member),
            is_admin=bool(names & self._admins) or bool(ids & self._admin_groups),
            blocked_models=MappingProxyType(blocked_models),
            blocked_clusters=MappingProxyType(blocked_clusters),
        )

    def _describe(self, groups: frozenset[str]) -> str:
        names = sorted(
            f"'{self._policy.group_names[g]}' ({g})" if g in self._policy.group_names else g for g in groups
        )
        if len(names) == 1:
            return f"the Globus group {names[0]}"
        return "one of the Globus groups " + ", ".join(names)

    def _allowed_domain(self, username: str) -> bool:
        domain = _domain(username)
        return any(domain == d or domain.endswith("." + d) for d in self._domains)


def _domain(username: str) -> str:
    return username.rpartition("@")[2].lower()


def _reauthenticate(message: str, **parameters: list[str]) -> dict[str, Any]:
    """A Globus Auth Requirements Error's members (https://docs.globus.org/api/auth/
    reference/#auth_requirements_errors): tools such as `hearth login` and the Globus SDK
    read them and start the sign-in that satisfies the requirement."""
    return {"authorization_parameters": {"session_message": message, "prompt": "login", **parameters}}
