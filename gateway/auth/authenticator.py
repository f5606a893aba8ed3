"""Who is calling? Bearer credentials to a `Principal`, with a short-lived cache.

Hearth API keys (``hth_…``) are checked against the store; keys given in the config (such as
``hearth demo --api-key``) are compared by SHA-256 digest in constant time. Results are cached
by the digest of the credential (never the credential itself): a verified key for
`key_cache_ttl_s`, a bad one for `negative_cache_ttl_s`, so a revoked key stops working within
the TTL on every replica and at once on the replica that revoked it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from datetime import UTC, datetime

from gateway.auth.keys import parse_key
from gateway.auth.principal import Principal
from gateway.errors import AuthenticationFailed
from gateway.store.keys import KeyStore

log = logging.getLogger(__name__)

_MAX_CACHE = 50_000


class Authenticator:
    def __init__(
        self,
        keys: KeyStore | None,
        static_keys: dict[str, Principal],
        *,
        cache_ttl_s: float = 30.0,
        negative_ttl_s: float = 5.0,
    ) -> None:
        """`static_keys` maps the SHA-256 hex digest of each configured key to its principal."""
        self._keys = keys
        self._static = [(bytes.fromhex(d), p) for d, p in static_keys.items()]
        self._ttl = cache_ttl_s
        self._negative_ttl = negative_ttl_s
        self._cache: dict[bytes, tuple[Principal | None, float]] = {}

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
            principal = cached[0]
        else:
            principal, ttl = await self._verify(credential, digest)
            if len(self._cache) >= _MAX_CACHE:
                self._cache.clear()
            self._cache[digest] = (principal, now + ttl)
        if principal is None:
            raise AuthenticationFailed("Incorrect API key provided.")
        return principal

    def forget(self, key_id: str) -> None:
        """Drop cached entries for a key (after it is revoked here)."""
        for digest, (principal, _) in list(self._cache.items()):
            if principal is not None and principal.key_id == key_id:
                del self._cache[digest]

    async def _verify(self, credential: str, digest: bytes) -> tuple[Principal | None, float]:
        """The principal (None for a bad credential) and how long that answer may be cached."""
        match = None
        for known, principal in self._static:
            if hmac.compare_digest(known, digest):  # constant time; keep looping regardless
                match = principal
        if match is not None:
            return match, self._ttl
        if self._keys is None or parse_key(credential) is None:
            return None, self._negative_ttl
        info = await self._keys.verify(credential)
        if info is None:
            return None, self._negative_ttl
        await self._keys.touch(info.id)
        ttl = self._ttl
        if info.expires_at is not None:  # never trust a key past its expiry
            ttl = min(ttl, max((info.expires_at - datetime.now(UTC)).total_seconds(), 0.0))
        return Principal(user=info.owner, key_id=info.id), ttl
