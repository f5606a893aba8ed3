"""What the Globus stand-in knows: clients, identities, groups, policies, sessions and tokens.

No HTTP here: tests/support/globus_auth.py serves this over the Globus wire contract. Each
wire operation (`introspect`, `dependent_tokens`, …) returns the JSON document Globus returns
(https://docs.globus.org/api/auth/reference/, https://docs.globus.org/api/groups/, and
globus_sdk 4.9.1's fixtures under `globus_sdk/testing/data`) or raises `OAuthError`.

Modelled as Globus does: a token's `sub` is the primary identity of the user's identity set
(`link`) while its session records which identities actually signed in; introspection answers
`{"active": false}` to a client that is neither the token's audience nor its client;
refreshing returns the same refresh token; revoking a refresh token also kills the access
tokens minted from it. Not modelled: `openid` (no id_token, no JWKS: asking for it is a 400
invalid_scope), consents, MFA, group roles other than "member", expiry of refresh tokens.
Unknown `authentication_policies` ids are a 400: no Globus document says what the service
does, so a gateway should also treat a missing evaluation as a failure.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import hmac
import secrets
import string
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, overload

GROUPS_SCOPE = "urn:globus:auth:scope:groups.api.globus.org:view_my_groups_and_memberships"
GROUPS_RESOURCE_SERVER = "groups.api.globus.org"
AUTH_RESOURCE_SERVER = "auth.globus.org"
ISSUER = "https://auth.globus.org"
# Globus Auth's own scopes that a login may ask for (besides openid, which is refused).
AUTH_SCOPES = (
    "profile",
    "email",
    "urn:globus:auth:scope:auth.globus.org:view_identity_set",
    "urn:globus:auth:scope:auth.globus.org:view_identities",
)


@dataclass(frozen=True)
class Identity:
    """A Globus identity, as `identity_set_detail` and the Auth identities API describe it."""

    id: str
    username: str
    name: str
    email: str | None
    identity_provider: str
    identity_provider_display_name: str
    organization: str | None

    @property
    def domain(self) -> str:
        return self.username.rpartition("@")[2].lower()


@dataclass(frozen=True)
class ResourceServer:
    """A registered API (the gateway): a confidential client that owns one scope."""

    client_id: str
    secret: str
    scope: str  # https://auth.globus.org/scopes/{client_id}/{suffix}


class OAuthError(Exception):
    """A refusal, rendered by the server as Globus Auth's error document."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail


@dataclass
class _Policy:
    id: str
    high_assurance: bool
    domains: tuple[str, ...]
    session_timeout_s: int | None


@dataclass
class _Session:
    """One sign-in of one browser into one app: who authenticated when, for which policies."""

    id: str
    authentications: dict[str, int]  # identity id -> auth_time
    satisfied_policies: frozenset[str] = frozenset()  # session_required_policies of the login


@dataclass
class _Grant:
    """What the tokens for one resource server stand for; a refresh token names one."""

    subject: Identity
    client_id: str
    resource_server: str
    scopes: tuple[str, ...]
    session: _Session | None  # None for client credentials
    refresh_token: str | None = None
    revoked: bool = False


@dataclass
class _AccessToken:
    grant: _Grant
    iat: int
    exp: int
    revoked: bool = False


@dataclass
class _Code:
    client_id: str
    redirect_uri: str
    scopes: tuple[str, ...]
    challenge: str | None
    offline: bool
    state: str | None
    subject: Identity
    session: _Session


@dataclass
class _Group:
    id: str
    name: str
    members: list[str] = field(default_factory=list)  # identity ids


def random_token(prefix: str = "Ag", length: int = 72) -> str:
    """Opaque, like Globus's tokens."""
    alphabet = string.ascii_letters + string.digits
    return prefix + "".join(secrets.choice(alphabet) for _ in range(length))


def split_scopes(value: str) -> list[str]:
    """Top-level scope strings, with any `[dependent scopes]` suffix dropped."""
    scopes, depth, current = [], 0, ""
    for char in value + " ":
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char.isspace() and depth == 0:
            if current:
                scopes.append(current.partition("[")[0])
            current = ""
        else:
            current += char
    return scopes


def commalist(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def _in_domains(identity: Identity, domains: Iterable[str]) -> bool:
    return any(fnmatch.fnmatch(identity.domain, d.lower()) for d in domains)


class GlobusWorld:
    """The directory and the token store, guarded by one lock (tests and server share them)."""

    token_lifetime_s = 172800  # what Globus gives tokens from its token endpoint (48 h)

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._secrets: dict[str, str | None] = {}  # client id -> secret; None: native app
        self._identities: dict[str, Identity] = {}
        self._sets: dict[str, list[str]] = {}  # identity id -> its identity set, primary first
        self._scopes: dict[str, tuple[str, tuple[str, ...]]] = {GROUPS_SCOPE: (GROUPS_RESOURCE_SERVER, ())}
        self._scopes.update({s: (AUTH_RESOURCE_SERVER, ()) for s in AUTH_SCOPES})
        self._policies: dict[str, _Policy] = {}
        self._policy_results: dict[tuple[str, str], bool] = {}
        self._groups: dict[str, _Group] = {}
        self._access: dict[str, _AccessToken] = {}
        self._refresh: dict[str, _Grant] = {}
        self._codes: dict[str, _Code] = {}
        self.default_client_id = self.add_native_client()  # the app of tokens from issue_token

    # ---- setting up the world ---------------------------------------------------------

    def add_resource_server(
        self,
        client_id: str | None = None,
        secret: str | None = None,
        *,
        scope_suffix: str = "inference",
        dependent_scopes: tuple[str, ...] = (GROUPS_SCOPE,),
    ) -> ResourceServer:
        client_id, secret = self.add_confidential_client(client_id, secret)
        scope = f"https://auth.globus.org/scopes/{client_id}/{scope_suffix}"
        with self._lock:
            self._scopes[scope] = (client_id, tuple(dependent_scopes))
        return ResourceServer(client_id, secret, scope)

    def add_native_client(self, client_id: str | None = None) -> str:
        client_id = client_id or str(uuid.uuid4())
        with self._lock:
            self._secrets[client_id] = None
        return client_id

    def add_confidential_client(
        self, client_id: str | None = None, secret: str | None = None
    ) -> tuple[str, str]:
        """A service client; its own identity is `client_identity(client_id)`."""
        client_id = client_id or str(uuid.uuid4())
        secret = secret or secrets.token_urlsafe(32)
        identity = Identity(
            id=client_id,
            username=f"{client_id}@clients.auth.globus.org",
            name=client_id,
            email=None,
            identity_provider=str(uuid.uuid5(uuid.NAMESPACE_DNS, "clients.auth.globus.org")),
            identity_provider_display_name="Globus Auth (clients)",
            organization=None,
        )
        with self._lock:
            self._secrets[client_id] = secret
            self._identities[client_id] = identity
            self._sets[client_id] = [client_id]
        return client_id, secret

    def client_identity(self, client_id: str) -> Identity:
        with self._lock:
            return self._identities[client_id]

    def add_identity(
        self, username: str, *, name: str | None = None, email: str | None = None, idp_name: str | None = None
    ) -> Identity:
        """An identity; its IdP id (and name, unless given) come from the username's domain."""
        local, _, domain = username.rpartition("@")
        domain = (domain if local else "globusid.org").lower()
        identity = Identity(
            id=str(uuid.uuid4()),
            username=username,
            name=name or (local or username).replace(".", " ").title(),
            email=email if email is not None else (username if local else None),
            identity_provider=str(uuid.uuid5(uuid.NAMESPACE_DNS, domain)),
            identity_provider_display_name=idp_name or domain,
            organization=idp_name or domain,
        )
        with self._lock:
            self._identities[identity.id] = identity
            self._sets[identity.id] = [identity.id]
        return identity

    def link(self, primary: Identity, *others: Identity) -> None:
        """Merge the identities' sets into one whose primary (every token's `sub`) is `primary`."""
        with self._lock:
            members = [primary.id, *self._sets[primary.id]]
            for other in others:
                members += self._sets[other.id]
            merged = list(dict.fromkeys(members))
            for identity_id in merged:
                self._sets[identity_id] = merged

    def add_group(self, name: str, *members: Identity) -> str:
        group = _Group(str(uuid.uuid4()), name, [m.id for m in members])
        with self._lock:
            self._groups[group.id] = group
        return group.id

    def add_member(self, group_id: str, identity: Identity) -> None:
        with self._lock:
            if identity.id not in self._groups[group_id].members:
                self._groups[group_id].members.append(identity.id)

    def remove_member(self, group_id: str, identity: Identity) -> None:
        with self._lock:
            self._groups[group_id].members.remove(identity.id)

    def add_policy(
        self,
        policy_id: str | None = None,
        *,
        high_assurance: bool = True,
        domains: tuple[str, ...] = (),
        session_timeout_s: int | None = None,
    ) -> str:
        """An authentication policy, evaluated at introspection (`authentication_policies`).

        High assurance: true iff the token's session holds an authentication by an identity
        from `domains` (any, when empty; fnmatch patterns such as "*.anl.gov" work) made within
        `session_timeout_s`; a login that asked for this policy in `session_required_policies`
        counts as from the right domain. Not high assurance: true iff the identity set holds an
        identity from `domains`. `set_policy_result` overrides both.
        """
        policy = _Policy(policy_id or str(uuid.uuid4()), high_assurance, tuple(domains), session_timeout_s)
        with self._lock:
            self._policies[policy.id] = policy
        return policy.id

    def set_policy_result(self, policy_id: str, identity: Identity, passed: bool | None) -> None:
        """Force the policy's evaluation for tokens of `identity`'s set (None: evaluate again)."""
        with self._lock:
            if passed is None:
                self._policy_results.pop((policy_id, identity.id), None)
            else:
                self._policy_results[(policy_id, identity.id)] = passed

    # ---- tokens held by tests -----------------------------------------------------------

    @overload
    def issue_token(
        self,
        identity: Identity,
        resource_server: ResourceServer | str,
        *,
        scopes: list[str] | None = ...,
        expires_in: int = ...,
        client_id: str | None = ...,
        session_identities: list[Identity] | None = ...,
        auth_time: int | None = ...,
        refresh: Literal[False] = ...,
    ) -> str: ...

    @overload
    def issue_token(
        self,
        identity: Identity,
        resource_server: ResourceServer | str,
        *,
        scopes: list[str] | None = ...,
        expires_in: int = ...,
        client_id: str | None = ...,
        session_identities: list[Identity] | None = ...,
        auth_time: int | None = ...,
        refresh: Literal[True],
    ) -> tuple[str, str]: ...

    def issue_token(
        self,
        identity: Identity,
        resource_server: ResourceServer | str,
        *,
        scopes: list[str] | None = None,
        expires_in: int = 3600,
        client_id: str | None = None,
        session_identities: list[Identity] | None = None,
        auth_time: int | None = None,
        refresh: bool = False,
    ) -> str | tuple[str, str]:
        """An access token as if `identity` had signed in to app `client_id` (default: a native
        app of the stand-in's) and consented to `scopes` (default: the resource server's scope).

        `sub` is the primary identity of `identity`'s set; the session holds an authentication
        by each of `session_identities` (default `[identity]`) at `auth_time` (default now).
        `resource_server` may be another ResourceServer (a token for another audience) or
        GROUPS_RESOURCE_SERVER. With `refresh=True` returns `(access_token, refresh_token)`.
        """
        if isinstance(resource_server, ResourceServer):
            rs, default_scopes = resource_server.client_id, [resource_server.scope]
        else:
            rs = resource_server
            with self._lock:
                default_scopes = [s for s, (owner, _) in self._scopes.items() if owner == rs][:1]
        chosen = scopes if scopes is not None else default_scopes
        if not chosen:
            raise ValueError(f"no scope is registered for resource server {rs!r}: pass scopes=")
        when = int(time.time()) if auth_time is None else auth_time
        with self._lock:
            session = _Session(str(uuid.uuid4()), {i.id: when for i in (session_identities or [identity])})
            grant = _Grant(
                self._primary(identity), client_id or self.default_client_id, rs, tuple(chosen), session
            )
            if refresh:
                grant.refresh_token = random_token()
                self._refresh[grant.refresh_token] = grant
            access = self._mint(grant, expires_in)
        return (access, grant.refresh_token) if grant.refresh_token else access

    def expire(self, token: str) -> None:
        """Make an access token expired (introspection: inactive)."""
        with self._lock:
            if token not in self._access:
                raise ValueError("expire() takes an access token this stand-in issued")
            self._access[token].exp = int(time.time()) - 1

    def revoke(self, token: str) -> None:
        """Revoke an access token, or a refresh token and every access token minted from it."""
        with self._lock:
            if token in self._access:
                self._access[token].revoked = True
            elif token in self._refresh:
                self._refresh[token].revoked = True

    # ---- wire operations (the server calls these) ------------------------------------------

    def authenticate_client(
        self, basic: tuple[str, str] | None, form_client_id: str | None, *, public: bool
    ) -> str:
        """HTTP Basic (id, secret) for confidential clients; a form `client_id` for native apps."""
        with self._lock:
            if basic is not None:
                known = self._secrets.get(basic[0])
                if known is not None and hmac.compare_digest(known, basic[1]):
                    return basic[0]
            elif public and form_client_id in self._secrets and self._secrets[form_client_id] is None:
                return form_client_id
        raise OAuthError(401, "invalid_client", "client authentication failed")

    def introspect(
        self, client_id: str, token: str, include: list[str], policies: list[str]
    ) -> dict[str, Any]:
        with self._lock:
            if unknown := [p for p in policies if p not in self._policies]:
                raise OAuthError(400, "invalid_request", f"unknown authentication policies {unknown}")
            access = self._active(token)
            if access is None or client_id not in {access.grant.resource_server, access.grant.client_id}:
                return {"active": False}
            return self._introspection(access, include, policies)

    def sign_in(self, user: Identity, query: dict[str, str]) -> str:
        """The browser step of /authorize: `user` signs in (a new session) and consents; a code."""
        with self._lock:
            client_id = query.get("client_id", "")
            if client_id not in self._secrets:
                raise OAuthError(400, "invalid_client", "unknown client_id")
            if query.get("response_type") != "code" or not query.get("redirect_uri"):
                raise OAuthError(400, "invalid_request", "need response_type=code and a redirect_uri")
            challenge = query.get("code_challenge")
            native = self._secrets[client_id] is None
            if native and (not challenge or query.get("code_challenge_method") != "S256"):
                raise OAuthError(400, "invalid_request", "a native app must send an S256 code_challenge")
            policies = commalist(query.get("session_required_policies"))
            if unknown := [p for p in policies if p not in self._policies]:
                raise OAuthError(400, "invalid_request", f"unknown session_required_policies {unknown}")
            scopes = tuple(split_scopes(query.get("scope", "")))
            self._by_resource_server(scopes)  # refuse unknown scopes before the redirect
            required = set(commalist(query.get("session_required_identities")))
            domains = commalist(query.get("session_required_single_domain"))
            signed_in = [
                i
                for i in self._sets[user.id]
                if i == user.id or i in required or (domains and _in_domains(self._identities[i], domains))
            ]
            session = _Session(
                str(uuid.uuid4()), dict.fromkeys(signed_in, int(time.time())), frozenset(policies)
            )
            code = random_token("", 30)
            self._codes[code] = _Code(
                client_id,
                query["redirect_uri"],
                scopes,
                challenge,
                query.get("access_type") == "offline",
                query.get("state"),
                self._primary(user),
                session,
            )
            return code

    def authorization_code(
        self, client_id: str, code: str, redirect_uri: str, verifier: str
    ) -> dict[str, Any]:
        with self._lock:
            pending = self._codes.pop(code, None)  # single use, even when the exchange fails
            if pending is None or pending.client_id != client_id:
                raise OAuthError(400, "invalid_grant", "unknown, used or foreign authorization code")
            if redirect_uri != pending.redirect_uri:
                raise OAuthError(400, "invalid_grant", "redirect_uri differs from the authorize request")
            if pending.challenge is not None:
                digest = hashlib.sha256(verifier.encode()).digest()
                if not hmac.compare_digest(
                    base64.urlsafe_b64encode(digest).decode().rstrip("="), pending.challenge
                ):
                    raise OAuthError(400, "invalid_grant", "code_verifier does not match the code_challenge")
            grants = self._grants(
                pending.scopes, pending.subject, client_id, pending.session, pending.offline
            )
            return self._token_response(grants, pending.state)

    def refresh(self, client_id: str, refresh_token: str) -> dict[str, Any]:
        with self._lock:
            grant = self._refresh.get(refresh_token)
            if grant is None or grant.revoked or grant.client_id != client_id:
                raise OAuthError(400, "invalid_grant", "unknown, revoked or foreign refresh token")
            return self._token_response([grant])

    def client_credentials(self, client_id: str, scope: str) -> dict[str, Any]:
        with self._lock:
            identity = self._identities[client_id]
            return self._token_response(self._grants(split_scopes(scope), identity, client_id, None, False))

    def dependent_tokens(
        self, client_id: str, token: str, scope: str | None, offline: bool
    ) -> list[dict[str, Any]]:
        """One token per resource server of the dependent scopes of the caller's scopes."""
        with self._lock:
            access = self._active(token)
            if access is None or access.grant.resource_server != client_id:
                raise OAuthError(400, "invalid_grant", "token is inactive or not for this client")
            available = [d for s in access.grant.scopes for d in self._scopes.get(s, ("", ()))[1]]
            wanted = split_scopes(scope) if scope else available
            if missing := [s for s in wanted if s not in available]:
                raise OAuthError(400, "invalid_scope", f"no dependent scopes {missing} on this token")
            if not wanted:
                return []
            grants = self._grants(wanted, access.grant.subject, client_id, access.grant.session, offline)
            return [self._token_doc(g, dependent=True) for g in grants]

    def my_groups(self, token: str, statuses: list[str]) -> list[dict[str, Any]] | None:
        """The groups in which any identity of the token's set is a member; None: bad token."""
        with self._lock:
            access = self._active(token)
            if access is None or GROUPS_SCOPE not in access.grant.scopes:
                return None
            if statuses and "active" not in statuses:
                return []
            members = self._sets[access.grant.subject.id]
            docs = []
            for group in self._groups.values():
                if mine := [m for m in members if m in group.members]:
                    docs.append(self._group_doc(group, mine))
            return docs

    # ---- internals (the lock is held) ----------------------------------------------------

    def _primary(self, identity: Identity) -> Identity:
        return self._identities[self._sets[identity.id][0]]

    def _mint(self, grant: _Grant, expires_in: int) -> str:
        now = int(time.time())
        token = random_token()
        self._access[token] = _AccessToken(grant, now, now + expires_in)
        return token

    def _active(self, token: str) -> _AccessToken | None:
        access = self._access.get(token)
        if access is None or access.revoked or access.grant.revoked or time.time() >= access.exp:
            return None
        return access

    def _by_resource_server(self, scopes: Iterable[str]) -> dict[str, list[str]]:
        """Scopes grouped by resource server, in the order asked; unknown ones are refused."""
        by_rs: dict[str, list[str]] = {}
        for scope in scopes:
            if scope == "openid":
                raise OAuthError(400, "invalid_scope", "the Globus stand-in issues no id_token: drop openid")
            if scope not in self._scopes:
                raise OAuthError(400, "invalid_scope", f"unknown scope {scope!r}")
            by_rs.setdefault(self._scopes[scope][0], []).append(scope)
        if not by_rs:
            raise OAuthError(400, "invalid_scope", "no scope requested")
        return by_rs

    def _grants(
        self,
        scopes: Iterable[str],
        subject: Identity,
        client_id: str,
        session: _Session | None,
        offline: bool,
    ) -> list[_Grant]:
        grants = [
            _Grant(subject, client_id, rs, tuple(s), session)
            for rs, s in self._by_resource_server(scopes).items()
        ]
        for grant in grants if offline else ():
            grant.refresh_token = random_token()
            self._refresh[grant.refresh_token] = grant
        return grants

    def _token_doc(self, grant: _Grant, *, dependent: bool = False) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "access_token": self._mint(grant, self.token_lifetime_s),
            "expires_in": self.token_lifetime_s,
            "resource_server": grant.resource_server,
            "scope": " ".join(grant.scopes),
            "token_type": "bearer"
            if dependent
            else "Bearer",  # as Globus (and the SDK's fixtures) spell them
        }
        if grant.refresh_token:
            doc["refresh_token"] = grant.refresh_token
        return doc

    def _token_response(self, grants: list[_Grant], state: str | None = None) -> dict[str, Any]:
        """The first resource server's token at the top level, the others in `other_tokens`."""
        docs = [self._token_doc(g) for g in grants]
        response = {**docs[0], "other_tokens": docs[1:]}
        if state is not None:
            response["state"] = state
        return response

    def _evaluate(self, policy: _Policy, grant: _Grant) -> bool:
        members = self._sets[grant.subject.id]
        for identity_id in members:
            forced = self._policy_results.get((policy.id, identity_id))
            if forced is not None:
                return forced
        if not policy.high_assurance:
            return not policy.domains or any(
                _in_domains(self._identities[i], policy.domains) for i in members
            )
        session, now = grant.session, time.time()
        if session is None:
            return False
        for identity_id, auth_time in session.authentications.items():
            if policy.session_timeout_s is not None and now - auth_time > policy.session_timeout_s:
                continue
            if (
                not policy.domains
                or policy.id in session.satisfied_policies
                or _in_domains(self._identities[identity_id], policy.domains)
            ):
                return True
        return False

    def _introspection(self, access: _AccessToken, include: list[str], policies: list[str]) -> dict[str, Any]:
        grant, subject = access.grant, access.grant.subject
        doc: dict[str, Any] = {
            "active": True,
            "token_type": "Bearer",
            "scope": " ".join(grant.scopes),
            "client_id": grant.client_id,
            "sub": subject.id,
            "username": subject.username,
            "name": subject.name,
            "email": subject.email,
            "aud": [grant.resource_server],  # a registered API's resource server name is its client id
            "iss": ISSUER,
            "exp": access.exp,
            "iat": access.iat,
            "nbf": access.iat,
        }
        members = self._sets[subject.id]
        authentications = grant.session.authentications if grant.session else {}
        if "identity_set" in include:
            doc["identity_set"] = list(members)
        if "identity_set_detail" in include:
            doc["identity_set_detail"] = [
                {
                    "sub": i.id,
                    "username": i.username,
                    "name": i.name,
                    "email": i.email,
                    "identity_provider": i.identity_provider,
                    "identity_provider_display_name": i.identity_provider_display_name,
                    "organization": i.organization,
                    "status": "used",
                    "last_authentication": authentications.get(i.id),
                }
                for i in (self._identities[m] for m in members)
            ]
        if "session_info" in include:
            doc["session_info"] = {
                "session_id": grant.session.id if grant.session else None,
                "authentications": {
                    identity_id: {
                        "idp": self._identities[identity_id].identity_provider,
                        "auth_time": auth_time,
                        "acr": None,
                        "amr": None,
                        "custom_claims": {},
                    }
                    for identity_id, auth_time in authentications.items()
                },
            }
        if policies:
            doc["policy_evaluations"] = {
                p: {"evaluation": self._evaluate(self._policies[p], grant)} for p in policies
            }
        return doc

    def _group_doc(self, group: _Group, members: list[str]) -> dict[str, Any]:
        """Shaped like globus_sdk's `groups/get_my_groups` fixture."""
        return {
            "id": group.id,
            "name": group.name,
            "description": f"{group.name} (a test group)",
            "parent_id": None,
            "group_type": "regular",
            "enforce_session": False,
            "session_limit": 28800,
            "session_timeouts": {},
            "my_memberships": [
                {
                    "group_id": group.id,
                    "identity_id": m,
                    "username": self._identities[m].username,
                    "role": "member",
                    "status": "active",
                }
                for m in members
            ],
            "policies": {"group_visibility": "private", "group_members_visibility": "managers"},
            "subscription_id": None,
            "subscription_info": None,
        }
