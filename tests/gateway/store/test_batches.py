"""Batch rows: claims with leases, fenced updates, idempotent line checkpoints, paging."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from gateway.store.batches import BatchStore, batch_to_openai
from gateway.store.database import Database


async def make(store: BatchStore, owner: str = "alice") -> str:
    batch = await store.create(
        owner=owner, principal=f'{{"user": "{owner}"}}', endpoint="/v1/chat/completions",
        input_file_id="file-x", completion_window=timedelta(hours=24), window_name="24h", metadata={"k": "v"},
    )  # fmt: skip
    return batch.id


async def test_one_replica_holds_a_batch_until_its_lease_ends(database: Database) -> None:
    store = BatchStore(database)
    batch_id = await make(store)
    assert await store.claimable("r1") == [batch_id]
    assert await store.claim(batch_id, "r1", lease_s=0.5)
    assert not await store.claim(batch_id, "r2", lease_s=0.5)
    assert await store.claimable("r2") == []
    assert await store.claim(batch_id, "r1", lease_s=0.5)  # renewal
    assert not await store.update(batch_id, "r2", status="in_progress")  # fenced
    await asyncio.sleep(0.6)
    assert await store.claim(batch_id, "r2", lease_s=5)  # taken over
    assert not await store.update(batch_id, "r1", status="in_progress")  # the old holder is fenced off
    assert await store.update(batch_id, "r2", status="in_progress")


async def test_checkpoints_keep_the_first_result(database: Database) -> None:
    store = BatchStore(database)
    batch_id = await make(store)
    await store.record(batch_id, [(1, True, '{"a": 1}'), (2, False, '{"b": 2}')])
    await store.record(batch_id, [(1, False, '{"again": 1}'), (3, True, '{"c": 3}')])
    assert await store.done_lines(batch_id) == {1, 2, 3}
    assert await store.counts(batch_id) == (2, 1)
    got = [r async for r in store.results(batch_id, chunk=2)]
    assert got == [(1, True, '{"a": 1}'), (2, False, '{"b": 2}'), (3, True, '{"c": 3}')]
    await store.delete_results(batch_id)
    assert await store.done_lines(batch_id) == set()


async def test_cancel_listing_and_openai_shape(database: Database) -> None:
    store = BatchStore(database)
    ids = [await make(store) for _ in range(3)]
    await make(store, owner="bob")
    assert await store.request_cancel(ids[0], "bob") is None  # not theirs
    cancelled = await store.request_cancel(ids[0], "alice")
    assert cancelled is not None
    assert cancelled.status == "cancelling"
    body = batch_to_openai(cancelled)
    assert body["object"] == "batch"
    assert body["metadata"] == {"k": "v"}
    assert body["cancelling_at"]
    assert body["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    assert body["errors"] is None
    page1 = await store.list("alice", limit=2)
    page2 = await store.list("alice", after=page1[-1].id, limit=2)
    assert [b.id for b in page1 + page2] == list(reversed(ids))
    assert await store.count_active("alice") == 3
    assert await store.count_active("bob") == 1
