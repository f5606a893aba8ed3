"""Usage rollups: raw usage events summed per hour and per UTC day, and raw events pruned.

Every replica runs :meth:`Rollups.run`; one at a time wins each round (the read position in
``rollup_state`` is claimed with a conditional UPDATE in the same transaction that writes the
sums, so a round is counted exactly once or not at all). Each round reads the events between the
position and the newest id seen at the *previous* round: by then every transaction that took a
lower id has committed, so no event is skipped. Raw events older than the retention are deleted
only once they are rolled up.

Groups: a user's usage is also summed under each Globus group (of those the gateway cares
about) they were last seen in, from ``user_groups``, which replicas fill as they admit users.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.auth.principal import Principal
from gateway.store.database import Database
from gateway.store.models import RollupState, UsageEvent, UsageRollup, UserGroup, utcnow

__all__ = ["Rollups"]

log = logging.getLogger(__name__)

_STATE = "usage"
_KEY = ("period", "period_start", "user", "model", "cluster", "group_id")
_SUMS = ("requests", "errors", "prompt_tokens", "completion_tokens", "latency_ms_sum")


class Rollups:
    def __init__(
        self, db: Database, *, interval_s: float = 60.0, retention_days: float = 90.0, chunk: int = 10_000
    ) -> None:
        self._db = db
        self._interval_s = interval_s
        self._retention = timedelta(days=retention_days)
        self._chunk = chunk
        self._seen_groups: dict[str, frozenset[str]] = {}
        self._pending_groups: dict[str, dict[str, str]] = {}

    def note_groups(self, principal: Principal) -> None:
        """Remember the user's groups (cheap; written at the next round)."""
        if principal.groups and self._seen_groups.get(principal.user) != principal.groups:
            self._seen_groups[principal.user] = principal.groups
            self._pending_groups[principal.user] = {
                g: principal.group_names.get(g, g) for g in principal.groups
            }

    async def run(self) -> None:
        """Roll up and prune every `interval_s` until cancelled; errors are logged, not raised."""
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.run_once()
                await self.prune()
            except (DBAPIError, OSError) as exc:
                log.warning("usage rollup round failed (%s); retrying next round", type(exc).__name__)

    async def run_once(self, *, catch_up: bool = False) -> int:
        """One round; returns how many events it counted (0 if another replica had the turn).

        ``catch_up`` also counts events newer than the previous round (tests, `hearth admin
        usage --refresh`): only safe when no usage is being written at the same moment.
        """
        await self._write_groups()
        try:
            async with self._db.engine.begin() as conn:
                return await self._round(conn, catch_up)
        except OperationalError as exc:  # SQLite: another process holds or changed the database
            log.info("usage rollup round skipped: %s", type(exc.orig).__name__ if exc.orig else exc)
            return 0

    async def prune(self) -> int:
        """Delete raw events past the retention that are already rolled up."""
        async with self._db.engine.begin() as conn:
            done = (
                await conn.execute(select(RollupState.done_id).where(RollupState.name == _STATE))
            ).scalar()
            if not done:
                return 0
            result = await conn.execute(
                delete(UsageEvent).where(UsageEvent.ts < utcnow() - self._retention, UsageEvent.id <= done)
            )
        deleted = int(result.rowcount or 0)
        if deleted:
            log.info("pruned %d usage events older than %s", deleted, self._retention)
        return deleted

    async def _round(self, conn: AsyncConnection, catch_up: bool) -> int:
        state = (await conn.execute(select(RollupState).where(RollupState.name == _STATE))).first()
        newest = int((await conn.execute(select(func.max(UsageEvent.id)))).scalar() or 0)
        if state is None:
            await conn.execute(insert(RollupState).values(name=_STATE, done_id=0, seen_id=0))
            done, seen = 0, 0
        else:
            done, seen = int(state.done_id), int(state.seen_id)
        upper = newest if catch_up else seen
        claimed = await conn.execute(
            update(RollupState)
            .where(RollupState.name == _STATE, RollupState.done_id == done)
            .values(done_id=max(upper, done), seen_id=newest)
        )
        if claimed.rowcount != 1:  # another replica took this round
            return 0
        if upper <= done:
            return 0
        counted = 0
        low = done
        while low < upper:
            high = min(low + self._chunk, upper)
            counted += await self._roll(conn, low, high)
            low = high
        return counted

    async def _roll(self, conn: AsyncConnection, low: int, high: int) -> int:
        e = UsageEvent
        rows = (
            await conn.execute(
                select(
                    e.ts,
                    e.user,
                    e.model,
                    e.cluster,
                    e.status,
                    e.prompt_tokens,
                    e.completion_tokens,
                    e.latency_ms,
                ).where(e.id > low, e.id <= high)
            )
        ).all()
        if not rows:
            return 0
        users = {r.user for r in rows}
        groups: dict[str, list[str]] = defaultdict(list)
        for user, group_id in (
            await conn.execute(select(UserGroup.user, UserGroup.group_id).where(UserGroup.user.in_(users)))
        ).all():
            groups[user].append(group_id)
        sums: dict[tuple[Any, ...], list[float]] = defaultdict(lambda: [0, 0, 0, 0, 0.0])
        for r in rows:
            hour = r.ts.replace(minute=0, second=0, microsecond=0)
            values = (1, int(r.status >= 400), r.prompt_tokens, r.completion_tokens, r.latency_ms)
            for period, start in (("hour", hour), ("day", hour.replace(hour=0))):
                for group_id in ("", *groups.get(r.user, ())):
                    acc = sums[(period, start, r.user, r.model, r.cluster, group_id)]
                    for i, v in enumerate(values):
                        acc[i] += v
        await self._upsert(conn, [{**dict(zip(_KEY, k, strict=True)), **dict(zip(_SUMS, v, strict=True))}
                                  for k, v in sums.items()])  # fmt: skip
        return len(rows)

    async def _upsert(self, conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
        table = UsageRollup.__table__
        dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
        stmt = dialect_insert(UsageRollup)
        stmt = stmt.on_conflict_do_update(
            index_elements=list(_KEY),
            set_={name: table.c[name] + stmt.excluded[name] for name in _SUMS},
        )
        await conn.execute(stmt, rows)

    async def _write_groups(self) -> None:
        if not self._pending_groups:
            return
        pending, self._pending_groups = self._pending_groups, {}
        now: datetime = utcnow()
        try:
            async with self._db.engine.begin() as conn:
                await conn.execute(delete(UserGroup).where(UserGroup.user.in_(pending)))
                await conn.execute(
                    insert(UserGroup),
                    [
                        {"user": user, "group_id": g, "group_name": name[:255], "seen_at": now}
                        for user, groups in pending.items()
                        for g, name in groups.items()
                    ],
                )
        except (DBAPIError, OSError):
            for user, groups in pending.items():  # keep them for the next round
                self._pending_groups.setdefault(user, groups)
            raise
