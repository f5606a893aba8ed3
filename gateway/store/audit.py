"""The audit log: auth decisions, API keys created and revoked, admin actions.

Written in the background like usage (:class:`gateway.store.writer.BatchWriter`), so recording
a decision never delays a request. An auth decision is recorded when a credential is judged,
not on every request that reuses the cached judgement. Rows name identities, key ids and
reasons, never a token or a key.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import select

from gateway.store.database import Database
from gateway.store.models import AuditEvent, utcnow
from gateway.store.writer import BatchWriter

__all__ = ["AuditLog", "AuditRecord"]

_MAX_TEXT = 255


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditRecord:
    actor: str
    action: str  # auth.token, auth.key, key.create, key.revoke, ...
    outcome: str  # allow, deny, ok
    target: str | None = None
    detail: str | None = None
    request_id: str | None = None
    ts: datetime

    def as_row(self) -> dict[str, Any]:
        row = {f: getattr(self, f) for f in _FIELDS}
        for name in ("actor", "target"):
            if row[name] is not None:
                row[name] = row[name][:_MAX_TEXT]
        return row


_FIELDS = tuple(f.name for f in fields(AuditRecord))


class AuditLog(BatchWriter[AuditRecord]):
    """Audit records into ``audit_events``; ``enabled=False`` records nothing."""

    def __init__(self, db: Database, *, enabled: bool = True, **options: Any) -> None:
        super().__init__(db, AuditEvent.__table__, name="audit", **options)
        self.enabled = enabled

    def log(
        self,
        actor: str,
        action: str,
        outcome: str,
        *,
        target: str | None = None,
        detail: str | None = None,
        request_id: str | None = None,
    ) -> None:
        if self.enabled:
            self.record(
                AuditRecord(
                    actor=actor,
                    action=action,
                    outcome=outcome,
                    target=target,
                    detail=detail,
                    request_id=request_id,
                    ts=utcnow(),
                )
            )

    async def query(
        self,
        *,
        since: datetime | None = None,
        actor: str | None = None,
        action: str | None = None,
        limit: int = 100,
    ) -> builtins.list[AuditEvent]:
        """The newest events first (after writing what is queued), filtered as asked."""
        await self.flush()
        stmt = select(AuditEvent).order_by(AuditEvent.ts.desc(), AuditEvent.id.desc()).limit(limit)
        if since is not None:
            stmt = stmt.where(AuditEvent.ts >= since)
        if actor is not None:
            stmt = stmt.where(AuditEvent.actor == actor)
        if action is not None:
            stmt = stmt.where(AuditEvent.action.startswith(action))
        async with self._db.session() as session:
            return list((await session.scalars(stmt)).all())
