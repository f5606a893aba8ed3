"""Persisted hearth API keys: create, list, revoke, verify.

The key format and hashing live in :mod:`gateway.auth.keys`; this module only stores digests
and answers "which live key is this?". Plaintext keys are returned once by :meth:`create`
and are never stored or logged.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, literal, select, update

from gateway.auth.keys import digest_matches, generate_key, parse_key
from gateway.store.database import Database
from gateway.store.models import ApiKey, UTCDateTime, utcnow

__all__ = ["ApiKeyInfo", "KeyStore", "VerifiedKey"]

log = logging.getLogger(__name__)

_MAX_TEXT = 255  # the width of api_keys.name and api_keys.owner


@dataclass(frozen=True, slots=True)
class ApiKeyInfo:
    """What may be shown about a key: everything but its digest."""

    id: str
    name: str
    owner: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    owner_username: str | None = None

    @classmethod
    def _from_row(cls, row: ApiKey) -> ApiKeyInfo:
        return cls(
            id=row.id,
            name=row.name,
            owner=row.owner,
            created_at=row.created_at,
            expires_at=row.expires_at,
            revoked_at=row.revoked_at,
            last_used_at=row.last_used_at,
            owner_username=row.owner_username,
        )

    def is_active(self, now: datetime) -> bool:
        """Neither revoked nor expired at ``now``."""
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or now < self.expires_at


@dataclass(frozen=True, slots=True, eq=False)
class VerifiedKey(ApiKeyInfo):
    """A live key as :meth:`KeyStore.verify` found it, with what judging it needs.

    Equal to the `ApiKeyInfo` of the same key: the credential is not part of its identity.
    """

    groups_credential: str | None = field(default=None, repr=False)  # sealed; never shown

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ApiKeyInfo):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in ApiKeyInfo.__dataclass_fields__)

    def __hash__(self) -> int:  # as ApiKeyInfo's: a hash of its fields
        return hash(tuple(getattr(self, f) for f in ApiKeyInfo.__dataclass_fields__))

    @classmethod
    def _from_row(cls, row: ApiKey) -> VerifiedKey:
        info = ApiKeyInfo._from_row(row)
        return cls(
            **{f: getattr(info, f) for f in ApiKeyInfo.__dataclass_fields__},
            groups_credential=row.groups_credential,
        )


class KeyStore:
    """API keys in the database. ``clock`` is injectable so tests can move time."""

    def __init__(self, db: Database, *, clock: Callable[[], datetime] = utcnow) -> None:
        self._db = db
        self._clock = clock

    async def create(
        self,
        owner: str,
        name: str,
        expires_at: datetime | None = None,
        *,
        owner_username: str | None = None,
        groups_credential: str | None = None,
    ) -> tuple[ApiKeyInfo, str]:
        """Make a key for ``owner``; return its info and the plaintext, which is not kept.

        A key made by a Globus user carries their username and their sealed Groups credential
        (see :mod:`gateway.auth.owners`), so it follows its owner's group memberships.

        ``ValueError`` for an empty or over-long owner or name, or a naive or past expiry.
        """
        _check_text("owner", owner)
        _check_text("name", name)
        now = self._clock()
        if expires_at is not None:
            if expires_at.tzinfo is None or expires_at.utcoffset() is None:
                raise ValueError("expires_at must be timezone-aware")
            if expires_at <= now:
                raise ValueError("expires_at is in the past")
        key_id, plaintext, digest = generate_key()
        row = ApiKey(
            id=key_id,
            digest=digest,
            name=name,
            owner=owner,
            created_at=now,
            expires_at=expires_at,
            owner_username=owner_username,
            groups_credential=groups_credential,
        )
        async with self._db.session() as session:
            session.add(row)
            await session.commit()
        log.info("api key %s created for %s", key_id, owner)
        return ApiKeyInfo._from_row(row), plaintext

    async def list(
        self, owner: str | None = None, include_revoked: bool = False
    ) -> builtins.list[ApiKeyInfo]:
        """Keys, oldest first; only ``owner``'s when given; revoked ones only if asked."""
        stmt = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
        if owner is not None:
            stmt = stmt.where(ApiKey.owner == owner)
        if not include_revoked:
            stmt = stmt.where(ApiKey.revoked_at.is_(None))
        async with self._db.session() as session:
            rows = (await session.scalars(stmt)).all()
        return [ApiKeyInfo._from_row(row) for row in rows]

    async def get(self, key_id: str) -> ApiKeyInfo | None:
        """One key by id, whatever its state."""
        async with self._db.session() as session:
            row = await session.get(ApiKey, key_id)
        return None if row is None else ApiKeyInfo._from_row(row)

    async def revoke(self, key_id: str, owner: str | None = None) -> bool:
        """Revoke a key; with ``owner``, only if it is theirs.

        True if the key exists (and belongs to ``owner``) and is now revoked; revoking twice
        is harmless and keeps the first revocation time. False if there is no such key for
        this owner, so callers can answer 404 without revealing other users' keys.
        """
        stmt = (
            update(ApiKey)
            .where(ApiKey.id == key_id)
            .values(revoked_at=func.coalesce(ApiKey.revoked_at, literal(self._clock(), UTCDateTime())))
            .returning(ApiKey.id)
        )
        if owner is not None:
            stmt = stmt.where(ApiKey.owner == owner)
        async with self._db.session() as session:
            revoked = (await session.execute(stmt)).scalar_one_or_none()
            await session.commit()
        if revoked is not None:
            log.info("api key %s revoked", key_id)
        return revoked is not None

    async def verify(self, plaintext: str) -> VerifiedKey | None:
        """The live key ``plaintext`` names, or None if it is malformed, unknown, wrong,
        revoked or expired. The digest is compared in constant time."""
        key_id = parse_key(plaintext)
        if key_id is None:
            return None
        async with self._db.session() as session:
            row = await session.get(ApiKey, key_id)
        if row is None:
            return None
        if not digest_matches(plaintext, row.digest):
            log.info("api key %s presented with a wrong secret", key_id)
            return None
        info = VerifiedKey._from_row(row)
        if not info.is_active(self._clock()):
            log.info("api key %s rejected: revoked or expired", key_id)
            return None
        return info

    async def touch(self, key_id: str) -> None:
        """Record that ``key_id`` was just used (``last_used_at``)."""
        stmt = update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=self._clock())
        async with self._db.session() as session:
            await session.execute(stmt)
            await session.commit()


def _check_text(field: str, value: str) -> None:
    if not value.strip():
        raise ValueError(f"{field} must not be empty")
    if len(value) > _MAX_TEXT:
        raise ValueError(f"{field} is longer than {_MAX_TEXT} characters")
