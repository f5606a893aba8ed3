"""The current Globus groups of an API key's owner, through the credential kept with the key.

When a Globus user creates a key, the gateway asks Globus for a dependent *refresh* token for
Groups on their behalf and keeps it sealed with the key. Judging the key later, the gateway
uses it to read the owner's memberships (cached for ``group_cache_ttl_s``), so a key stops
working when its owner leaves a required group, or revokes the gateway's consent.
"""

from __future__ import annotations

import hashlib
import logging

from gateway.auth.cache import SharedCache, SingleFlight
from gateway.auth.globus import CredentialRejected, GlobusService, GlobusUnavailable, Group
from gateway.auth.seal import Sealer, SealError
from gateway.errors import PermissionDenied, ServiceUnavailable
from gateway.store.keys import VerifiedKey

__all__ = ["OwnerGroups"]

log = logging.getLogger(__name__)


class OwnerGroups:
    def __init__(
        self,
        globus: GlobusService,
        sealer: Sealer,
        cache: SharedCache,
        *,
        ttl_s: float,
        negative_ttl_s: float,
    ) -> None:
        self._globus = globus
        self._sealer = sealer
        self._cache = cache
        self._ttl = ttl_s
        self._negative_ttl = negative_ttl_s
        self._flight: SingleFlight[list[Group]] = SingleFlight()

    def seal(self, credential: str) -> str:
        return self._sealer.seal(credential)

    async def groups(self, key: VerifiedKey) -> list[Group] | None:
        """The owner's active groups; None if the key carries no credential (made by an admin).

        403 if Globus no longer honours the credential, 503 if Globus cannot be asked.
        """
        if key.groups_credential is None:
            return None
        sealed = key.groups_credential
        cache_key = hashlib.sha256(sealed.encode()).hexdigest()
        return await self._flight.do(cache_key, lambda: self._lookup(key, sealed, cache_key))

    async def _lookup(self, key: VerifiedKey, sealed: str, cache_key: str) -> list[Group]:
        cached = await self._cache.get(cache_key)
        if cached is not None:
            if "rejected" in cached:
                raise _rejected(key)
            return [Group(**g) for g in cached["groups"]]
        try:
            groups = await self._globus.groups_for_credential(self._sealer.open(sealed))
        except (CredentialRejected, SealError) as exc:
            log.info("api key %s: owner's groups credential refused: %s", key.id, exc)
            await self._cache.set(cache_key, {"rejected": True}, self._negative_ttl)
            raise _rejected(key) from None
        except GlobusUnavailable as exc:
            raise ServiceUnavailable(
                f"Globus cannot be reached to check this key's owner's groups ({exc}); try again shortly.",
                code="auth_unavailable",
            ) from None
        await self._cache.set(
            cache_key, {"groups": [{"id": g.id, "name": g.name} for g in groups]}, self._ttl
        )
        return groups


def _rejected(key: VerifiedKey) -> PermissionDenied:
    return PermissionDenied(
        "Globus no longer lets Hearth read the groups of this key's owner "
        f"({key.owner_username or key.owner}): the owner must sign in again (`hearth login`) "
        "and create a new key.",
        code="owner_reauthentication_required",
    )
