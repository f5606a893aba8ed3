"""Rollups match raw events; reports read them; rounds count each event once; pruning."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from gateway.auth.principal import Principal
from gateway.store.database import Database
from gateway.store.models import UsageEvent, UsageRollup
from gateway.store.reports import recent_traffic, summary
from gateway.store.rollups import Rollups
from gateway.store.usage import UsageRecord, UsageRecorder

NOW = datetime.now(UTC)


def record(i: int, *, user: str, model: str, ts: datetime, status: int = 200) -> UsageRecord:
    return UsageRecord(
        ts=ts, request_id=f"r{i}", user=user, api_key_id=None, model=model,
        cluster="polaris" if i % 3 else "aurora",
        upstream="u", endpoint="chat.completions", status=status, prompt_tokens=i % 17,
        completion_tokens=i % 5, latency_ms=float(i % 7), ttft_ms=None, stream=bool(i % 2),
    )  # fmt: skip


async def write(db: Database, records: list[UsageRecord]) -> None:
    recorder = UsageRecorder(db, batch_size=1000)
    for r in records:
        recorder.record(r)
    await recorder.flush()


def sample(n: int) -> list[UsageRecord]:
    rng = random.Random(7)
    return [
        record(
            i,
            user=rng.choice(["alice", "bob", "carol"]),
            model=rng.choice(["small", "big"]),
            ts=NOW - timedelta(hours=rng.randrange(0, 60), minutes=rng.randrange(60)),
            status=rng.choice([200] * 9 + [502]),
        )
        for i in range(n)
    ]


async def test_rollups_match_raw_events(database: Database) -> None:
    records = sample(600)
    await write(database, records)
    rollups = Rollups(database, chunk=97)  # several chunks per round
    assert await rollups.run_once(catch_up=True) == 600
    for period in ("hour", "day"):
        async with database.session() as s:
            total = (
                await s.execute(
                    select(
                        func.sum(UsageRollup.requests),
                        func.sum(UsageRollup.errors),
                        func.sum(UsageRollup.prompt_tokens),
                        func.sum(UsageRollup.completion_tokens),
                    ).where(UsageRollup.period == period, UsageRollup.group_id == "")
                )
            ).one()
        assert tuple(total) == (
            600,
            sum(r.status >= 400 for r in records),
            sum(r.prompt_tokens for r in records),
            sum(r.completion_tokens for r in records),
        )
    by_user = await summary(database, since=NOW - timedelta(days=3), by=("user", "model"))
    expected: Counter[tuple[str, str]] = Counter()
    for r in records:
        expected[(r.user, r.model)] += r.prompt_tokens + r.completion_tokens
    assert {row.key: row.total_tokens for row in by_user} == dict(expected)
    assert [row.total_tokens for row in by_user] == sorted(
        (row.total_tokens for row in by_user), reverse=True
    )


async def test_hourly_window_and_one_user(database: Database) -> None:
    records = sample(300)
    await write(database, records)
    await Rollups(database).run_once(catch_up=True)
    since = NOW - timedelta(hours=5)
    rows = await summary(database, since=since, by=("cluster",), user="bob")
    floor = since.replace(minute=0, second=0, microsecond=0)
    wanted = [r for r in records if r.user == "bob" and r.ts >= floor]
    assert sum(row.requests for row in rows) == len(wanted)
    days = await summary(database, since=NOW - timedelta(days=4), by=("day",))
    assert sum(row.requests for row in days) == 300
    assert all(len(row.key[0]) == 10 for row in days)  # YYYY-MM-DD


async def test_groups_count_each_member(database: Database) -> None:
    rollups = Rollups(database)
    rollups.note_groups(Principal(user="alice", groups=frozenset({"g1", "g2"}), group_names={"g1": "One"}))
    rollups.note_groups(Principal(user="bob", groups=frozenset({"g1"})))
    await write(
        database, [record(i, user=u, model="m", ts=NOW) for i, u in enumerate(["alice", "bob", "carol"])]
    )
    await rollups.run_once(catch_up=True)
    rows = await summary(database, since=NOW - timedelta(hours=1), by=("group",))
    assert {row.key[0]: row.requests for row in rows} == {"g1": 2, "g2": 1}


async def test_each_event_counted_once_across_rounds_and_replicas(database: Database) -> None:
    replicas = [Rollups(database), Rollups(database)]
    await write(database, sample(100))
    # A normal round only counts what the previous round saw: the first counts nothing.
    assert await replicas[0].run_once() == 0
    await write(database, sample(50))
    counted = await asyncio.gather(*(r.run_once() for r in replicas))
    await write(database, sample(25))
    counted += await asyncio.gather(*(r.run_once() for r in replicas))
    counted.append(await replicas[1].run_once(catch_up=True))
    assert sum(counted) == 175
    async with database.session() as s:
        requests = (
            await s.execute(
                select(func.sum(UsageRollup.requests)).where(
                    UsageRollup.period == "hour", UsageRollup.group_id == ""
                )
            )
        ).scalar()
    assert requests == 175


async def test_prune_only_rolled_up_old_events(database: Database) -> None:
    old = [record(i, user="a", model="m", ts=NOW - timedelta(days=100)) for i in range(10)]
    await write(database, [*old, record(99, user="a", model="m", ts=NOW)])
    rollups = Rollups(database, retention_days=90)
    assert await rollups.prune() == 0  # nothing rolled up yet
    await rollups.run_once(catch_up=True)
    assert await rollups.prune() == 10
    async with database.session() as s:
        assert (await s.execute(select(func.count()).select_from(UsageEvent))).scalar() == 1
    rows = await summary(database, since=NOW - timedelta(days=120), by=("user",))
    assert rows[0].requests == 11  # the rollups keep what was pruned


async def test_recent_traffic(database: Database) -> None:
    await write(database, [
        record(1, user="a", model="m", ts=NOW - timedelta(minutes=5)),
        record(2, user="a", model="m", ts=NOW - timedelta(minutes=6), status=503),
        record(3, user="a", model="m", ts=NOW - timedelta(hours=2)),
    ])  # fmt: skip
    rows = await recent_traffic(database, minutes=60)
    assert [(r.model, r.cluster, r.requests, r.errors) for r in rows] == [("m", "polaris", 2, 1)]
    assert rows[0].mean_latency_ms == 1.5
