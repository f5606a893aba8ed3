"""Who is calling? Bearer credentials to a `Principal`, with a short-lived cache.

Three kinds of credential, told apart without a lookup:

- keys given in the config (such as ``hearth demo --api-key``), compared by SHA-256 digest in
  constant time;
- Hearth API keys (``hth_…``), checked against the store; a key made by a Globus user acts as
  that user and is judged by the user's current groups (:mod:`gateway.auth.owners`);
- anything else is a Globus access token when Globus Auth is configured
  (:mod:`gateway.auth.tokens`), else refused.

Results are cached by the digest of the credential (never the credential itself): a verified
key for `key_cache_ttl_s`, a refusal for `negative_cache_ttl_s`, so a revoked key stops working
within the TTL on every replica and at once on the replica that revoked it. Globus tokens carry
their own TTLs (bounded by the token's expiry).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from dataclasses import replace
from datetime import UTC, datetime

from gateway.auth.keys import parse_key
from gateway.auth.owners import OwnerGroups
from gateway.auth.policy import AccessPolicy
from gateway.auth.principal import Principal
from gateway.auth.tokens import TokenVerifier
from gateway.errors import AuthenticationFailed, HearthError, PermissionDenied
from gateway.metrics import GatewayMetrics
from gateway.store.audit import AuditLog
from gateway.store.keys import KeyStore, VerifiedKey

log = logging.getLogger(__name__)

_MAX_CACHE = 50_000
_BAD_KEY = AuthenticationFailed("Incorrect API key provided.")


class Authenticator:
    def __init__(
        self,
        keys: KeyStore | None,
        static_keys: dict[str, Principal],
        *,
        cache_ttl_s: float = 30.0,
        negative_ttl_s: float = 5.0,
        tokens: TokenVerifier | None = None,
        owners: OwnerGroups | None = None,
        policy: AccessPolicy | None = None,
        audit: AuditLog | None = None,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        """`static_keys` maps the SHA-256 hex digest of each configured key to its principal.

        With `tokens` (Globus Auth configured), `owners` and `policy` judge stored keys by
        their owner's groups and anything that is not a key is introspected as a token.
        """
        self._keys = keys
        self._static = [(bytes.fromhex(d), p) for d, p in static_keys.items()]
        self._ttl = cache_ttl_s
        self._negative_ttl = negative_ttl_s
        self._tokens = tokens
        self._owners = owners
        self._policy = policy
        self._audit = audit
        self._metrics = metrics
        self._cache: dict[bytes, tuple[Principal | HearthError, float]] = {}

    @property
    def globus(self) -> bool:
        return self._tokens is not None

    async def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise AuthenticationFailed(
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
                code="missing_api_key",
            )
        scheme, _, credential = authorization.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise AuthenticationFailed("The Authorization header must be 'Bearer <key>'.")
        digest = hashlib.sha256(credential.encode()).digest()
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[1] > now:
            result = cached[0]
        else:
            result, ttl = await self._verify(credential, digest)
            if len(self._cache) >= _MAX_CACHE:
                self._cache.clear()
            self._cache[digest] = (result, now + ttl)
        if isinstance(result, HearthError):
            raise result
        return result

    def forget(self, key_id: str) -> None:
        """Drop cached entries for a key (after it is revoked here)."""
        for digest, (result, _) in list(self._cache.items()):
            if isinstance(result, Principal) and result.key_id == key_id:
                del self._cache[digest]

    async def _verify(self, credential: str, digest: bytes) -> tuple[Principal | HearthError, float]:
        """The principal (or the refusal) and how long that answer may be cached; each decision
        is counted in hearth_auth_decisions_total by method and outcome."""
        match = None
        for known, principal in self._static:
            if hmac.compare_digest(known, digest):  # constant time; keep looping regardless
                match = principal
        if match is not None:
            self._count("static_key", "allow")
            return match, self._ttl
        if parse_key(credential) is not None:
            method = "api_key"
            verify = self._verify_key(credential)
        elif self._tokens is not None:
            method = "globus"
            verify = self._tokens.verify(credential, digest.hex())
        else:  # neither a configured key nor a stored one, and no Globus Auth to ask
            self._count("static_key", "deny")
            return _BAD_KEY, self._negative_ttl
        try:
            result, ttl = await verify
        except Exception:  # the store or Globus could not be asked: no decision
            self._count(method, "unavailable")
            raise
        self._count(method, "deny" if isinstance(result, HearthError) else "allow")
        return result, ttl

    def _count(self, method: str, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.child(self._metrics.auth_decisions, method, outcome).inc()

    async def _verify_key(self, credential: str) -> tuple[Principal | HearthError, float]:
        if self._keys is None:
            return _BAD_KEY, self._negative_ttl
        info = await self._keys.verify(credential)
        if info is None:
            return _BAD_KEY, self._negative_ttl
        try:
            principal = await self._key_principal(info)
        except PermissionDenied as refusal:
            self._record(info, "deny", refusal.message)
            return refusal, self._negative_ttl
        await self._keys.touch(info.id)
        self._record(info, "allow", None)
        ttl = self._ttl
        if info.expires_at is not None:  # never trust a key past its expiry
            ttl = min(ttl, max((info.expires_at - datetime.now(UTC)).total_seconds(), 0.0))
        return principal, ttl

    async def _key_principal(self, info: VerifiedKey) -> Principal:
        if self._policy is None or self._owners is None:
            return Principal(user=info.owner, key_id=info.id, auth="api_key", username=info.owner_username)
        groups = await self._owners.groups(info)
        return replace(
            self._policy.admit_key_owner(info.owner, info.owner_username, info.id, groups),
            key_id=info.id,
        )

    def _record(self, info: VerifiedKey, outcome: str, reason: str | None) -> None:
        if self._audit is not None:
            self._audit.log(info.owner, "auth.key", outcome, target=info.id, detail=reason)
