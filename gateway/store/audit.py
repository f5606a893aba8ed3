"""The audit log: auth decisions, API keys created and revoked, admin actions.

Written in the background like usage (:class:`gateway.store.writer.BatchWriter`), so recording
a decision never delays a request. An auth decision is recorded when a credential is judged,
not on every request that reuses the cached judgement. Rows name identities, key ids and
reasons, never a token or a key.
"""

from __future__ import annotations

import builtins
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import select

from gateway.store.database import Database
from gateway.store.models import AuditEvent, utcnow
from gateway.store.writer import BatchWriter

__all__ = ["AuditLog", "AuditRecord"]

_MAX_TEXT = 255


class AuditRecord(NamedTuple):
    """A row of ``audit_events`` without its id, fields in the table's column order."""

    ts: datetime
    actor: str
    action: str  # auth.token, auth.key, key.create, key.revoke, ...
    outcome: str  # allow, deny, ok
    target: str | None = None
    detail: str | None = None
    request_id: str | None = None


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
                    ts=utcnow(),
                    actor=actor[:_MAX_TEXT],
                    action=action,
                    outcome=outcome,
                    target=None if target is None else target[:_MAX_TEXT],
                    detail=detail,
                    request_id=request_id,
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
