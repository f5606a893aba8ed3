"""Globus access tokens to principals: introspection, groups, policy; cached and coalesced.

A token is looked up once per ``token_cache_ttl_s`` (never past its expiry) across every
replica sharing Redis: concurrent requests with the same new token share one introspection
(:class:`SingleFlight`), and the facts are cached under the token's SHA-256. A refused token is
remembered for ``negative_cache_ttl_s``. Globus unreachable is a 503 and is not cached.
"""

from __future__ import annotations

import logging
import time

from gateway.auth.cache import SharedCache, SingleFlight
from gateway.auth.globus import CredentialRejected, GlobusService, GlobusUnavailable
from gateway.auth.policy import AccessPolicy, TokenFacts
from gateway.auth.principal import Principal
from gateway.config import GlobusSettings
from gateway.errors import AuthenticationFailed, HearthError, PermissionDenied, ServiceUnavailable
from gateway.store.audit import AuditLog

__all__ = ["TokenVerifier"]

log = logging.getLogger(__name__)


class TokenVerifier:
    def __init__(
        self,
        globus: GlobusService,
        policy: AccessPolicy,
        settings: GlobusSettings,
        cache: SharedCache,
        audit: AuditLog | None = None,
    ) -> None:
        self._globus = globus
        self._policy = policy
        self._settings = settings
        self._cache = cache
        self._audit = audit
        self._flight: SingleFlight[TokenFacts] = SingleFlight()

    async def verify(self, token: str, key: str) -> tuple[Principal | HearthError, float]:
        """The principal (or the 401/403 to answer) for ``token``, and how long it holds.

        ``key`` is the token's hex SHA-256. Raises `ServiceUnavailable` when Globus cannot be
        asked: that is never cached and never lets anyone in.
        """
        facts = await self._flight.do(key, lambda: self._facts(token, key))
        try:
            self._policy.check_token(facts)
            principal = self._policy.admit_token(facts)
        except (AuthenticationFailed, PermissionDenied) as refusal:
            self._record(facts, "deny", refusal.message)
            return refusal, self._settings.negative_cache_ttl_s
        self._record(facts, "allow", None)
        return principal, self._ttl(facts)

    async def facts(self, token: str, key: str) -> TokenFacts:
        """What Globus says about ``token`` (cached), for callers that need more than a principal."""
        return await self._flight.do(key, lambda: self._facts(token, key))

    async def _facts(self, token: str, key: str) -> TokenFacts:
        cached = await self._cache.get(key)
        if cached is not None:
            return TokenFacts.from_json(cached)
        try:
            facts = TokenFacts.from_introspection(await self._globus.introspect(token))
            if facts.active and not facts.is_client and self._policy.needs_groups:
                try:
                    self._policy.check_token(facts)
                except AuthenticationFailed:
                    pass  # not ours or expired: no point asking Groups
                else:
                    facts = facts.with_groups(await self._globus.groups_for_token(token))
        except GlobusUnavailable as exc:
            raise ServiceUnavailable(
                f"Globus Auth cannot be reached to check your token ({exc}); try again shortly.",
                code="auth_unavailable",
            ) from None
        except CredentialRejected:
            log.info("globus refused a dependent token for %s", facts.username or facts.sub)
            facts = facts.with_groups(())
        ttl = self._ttl(facts) if facts.active else self._settings.negative_cache_ttl_s
        await self._cache.set(key, facts.to_json(), ttl)
        return facts

    def _ttl(self, facts: TokenFacts) -> float:
        return max(0.0, min(self._settings.token_cache_ttl_s, facts.exp - time.time()))

    def _record(self, facts: TokenFacts, outcome: str, reason: str | None) -> None:
        if self._audit is not None:
            actor = facts.sub or "unknown"
            self._audit.log(actor, "auth.token", outcome, target=facts.username or None, detail=reason)
