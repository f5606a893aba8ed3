"""Usage reports: from the hourly and daily rollups, never by scanning raw events.

:func:`summary` answers "who used what" for any period at hour resolution (the current hour
through the last rollup run, at most `rollup_interval_s` behind). :func:`recent_traffic` is the
live view for the status page: the last minutes of raw events, an index range scan of a bounded
window (the only query that reads raw events).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Integer, func, select

from gateway.store.database import Database
from gateway.store.models import UsageEvent, UsageRollup, utcnow

__all__ = ["GROUPINGS", "Grouping", "TrafficRow", "UsageRow", "recent_traffic", "summary"]

Grouping = Literal["user", "model", "cluster", "group", "day"]
GROUPINGS: tuple[Grouping, ...] = ("user", "model", "cluster", "group", "day")


@dataclass(frozen=True, slots=True)
class TrafficRow:
    model: str
    cluster: str
    requests: int
    errors: int  # status >= 400
    prompt_tokens: int
    completion_tokens: int
    mean_latency_ms: float | None


@dataclass(frozen=True, slots=True)
class UsageRow:
    key: tuple[str, ...]  # the values of the grouping columns, in the order asked
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    latency_ms_sum: float

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def mean_latency_ms(self) -> float | None:
        return self.latency_ms_sum / self.requests if self.requests else None


async def recent_traffic(db: Database, *, minutes: int = 60) -> list[TrafficRow]:
    """Per model and cluster, what the last ``minutes`` of requests looked like."""
    since = utcnow() - timedelta(minutes=minutes)
    e = UsageEvent
    stmt = (
        select(
            e.model,
            e.cluster,
            func.count(),
            func.sum(func.cast(e.status >= 400, Integer)),
            func.coalesce(func.sum(e.prompt_tokens), 0),
            func.coalesce(func.sum(e.completion_tokens), 0),
            func.avg(e.latency_ms),
        )
        .where(e.ts >= since)
        .group_by(e.model, e.cluster)
        .order_by(e.model, e.cluster)
    )
    async with db.session() as session:
        rows = (await session.execute(stmt)).all()
    return [
        TrafficRow(m, c, int(n), int(err or 0), int(p), int(o), None if lat is None else float(lat))
        for m, c, n, err, p, o, lat in rows
    ]


async def summary(
    db: Database,
    *,
    since: datetime,
    until: datetime | None = None,
    by: Sequence[Grouping] = ("user",),
    user: str | None = None,
) -> list[UsageRow]:
    """Totals from the rollups between ``since`` and ``until``, grouped ``by`` the given columns,
    optionally for one ``user``; biggest token users first.

    Hourly rollups answer periods up to two days (hour resolution), daily ones longer periods
    and ``by=("day", ...)`` (day resolution, UTC days). ``group`` is the Globus groups the user
    was known to be in when the usage was rolled up; a user in two groups counts in both.
    """
    r = UsageRollup
    now = utcnow()
    daily = "day" in by or (until or now) - since > timedelta(days=2)
    period = "day" if daily else "hour"
    start = since.replace(minute=0, second=0, microsecond=0)
    if daily:
        start = start.replace(hour=0)
    columns = {
        "user": r.user,
        "model": r.model,
        "cluster": r.cluster,
        "group": r.group_id,
        "day": r.period_start,
    }
    keys = [columns[b].label(b) for b in by]
    stmt = select(
        *keys,
        func.sum(r.requests),
        func.sum(r.errors),
        func.sum(r.prompt_tokens),
        func.sum(r.completion_tokens),
        func.sum(r.latency_ms_sum),
    ).where(r.period == period, r.period_start >= start)
    # Rows with group_id "" are each user's own; the others repeat them once per group.
    stmt = stmt.where(r.group_id != "" if "group" in by else r.group_id == "")
    if until is not None:
        stmt = stmt.where(r.period_start < until)
    if user is not None:
        stmt = stmt.where(r.user == user)
    stmt = stmt.group_by(*keys)
    async with db.session() as session:
        rows = (await session.execute(stmt)).all()
    n = len(keys)
    out = []
    for row in rows:
        values: list[Any] = list(row)
        key = tuple(v.date().isoformat() if isinstance(v, datetime) else str(v) for v in values[:n])
        sums = [v or 0 for v in values[n:]]
        out.append(UsageRow(key, int(sums[0]), int(sums[1]), int(sums[2]), int(sums[3]), float(sums[4])))
    return sorted(out, key=lambda u: (-u.total_tokens, u.key))
