"""Build the gateway's authentication from settings: static keys, stored keys, Globus Auth."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import redis.asyncio as aioredis

from gateway.auth.authenticator import Authenticator
from gateway.auth.cache import SharedCache
from gateway.auth.globus import GlobusService
from gateway.auth.owners import OwnerGroups
from gateway.auth.policy import AccessPolicy
from gateway.auth.principal import Principal
from gateway.auth.seal import Sealer
from gateway.auth.tokens import TokenVerifier
from gateway.config import GlobusSettings, Settings
from gateway.metrics import GatewayMetrics
from gateway.store.audit import AuditLog
from gateway.store.keys import KeyStore

__all__ = ["GlobusAuth", "build_auth", "static_principals"]


@dataclass
class GlobusAuth:
    """The Globus side of auth, for the routes that need more than a principal."""

    settings: GlobusSettings
    service: GlobusService
    tokens: TokenVerifier
    owners: OwnerGroups
    policy: AccessPolicy

    def close(self) -> None:
        self.service.close()


def build_auth(
    settings: Settings,
    keys: KeyStore,
    redis: aioredis.Redis | None,
    audit: AuditLog,
    metrics: GatewayMetrics | None = None,
) -> tuple[Authenticator, GlobusAuth | None]:
    a = settings.auth
    globus: GlobusAuth | None = None
    if a.globus is not None:
        g = a.globus
        policy = AccessPolicy(
            a.policy,
            g,
            model_groups={name: m.required_groups for name, m in settings.models.items()},
            cluster_groups={name: c.required_groups for name, c in settings.clusters.items()},
            other_groups=settings.limits.groups.keys(),
        )
        service = GlobusService(g, required_policies=a.policy.required_policies)
        sealer = Sealer(
            key=g.token_encryption_key.get_secret_value() if g.token_encryption_key else None,
            derive_from=g.client_secret.get_secret_value(),
        )
        tokens = TokenVerifier(service, policy, g, SharedCache(redis, prefix="hearth:auth:token:"), audit)
        owners = OwnerGroups(
            service,
            sealer,
            SharedCache(redis, prefix="hearth:auth:owner:"),
            ttl_s=g.group_cache_ttl_s,
            negative_ttl_s=g.negative_cache_ttl_s,
        )
        globus = GlobusAuth(g, service, tokens, owners, policy)
    authenticator = Authenticator(
        keys,
        static_principals(settings),
        cache_ttl_s=a.key_cache_ttl_s,
        negative_ttl_s=a.negative_cache_ttl_s,
        tokens=globus.tokens if globus else None,
        owners=globus.owners if globus else None,
        policy=globus.policy if globus else None,
        audit=audit,
        metrics=metrics,
    )
    return authenticator, globus


def static_principals(settings: Settings) -> dict[str, Principal]:
    out = {}
    for k in settings.auth.api_keys:
        if k.sha256 is not None:
            digest = k.sha256
        else:
            assert k.key is not None  # StaticKey guarantees one of the two
            digest = hashlib.sha256(k.key.get_secret_value().encode()).hexdigest()
        models = frozenset(k.models) if k.models is not None else None
        out[digest] = Principal(user=k.owner, is_admin=k.admin, models=models)
    return out
