"""The OpenAI Batch and Files APIs end to end: the unmodified OpenAI SDK, a real gateway
process, the sim engine as workers; crash and takeover with real processes killed."""

from __future__ import annotations

import io
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from tests.support.gateway import Gateway, Sim, start_gateway, start_sim, upstream, wait_for

pytestmark = pytest.mark.timeout(180)

OTHER_KEY = "sk-other-user-batch-test"


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


def requests(model: str, n: int, *, prefix: str = "req") -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"{prefix}-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": f"line {i}"}], "max_tokens": 4},
        }
        for i in range(n)
    ]


def gateway(logs: Path, sims: list[Sim], tmp: Path, **batch: Any) -> Gateway:
    return start_gateway(
        logs,
        # Models named, not discovered: a failing engine answers /v1/models with its failure too.
        clusters={"local": {"upstreams": [upstream(s, s.model, models=[s.model]) for s in sims]}},
        store_url=f"sqlite:///{tmp / 'hearth.db'}",
        batch={"files_dir": str(tmp / "files"), **batch},
        extra_keys=[{"owner": "other", "key": OTHER_KEY}],
    )


@pytest.fixture
def slow(logs: Path) -> Iterator[Sim]:
    s = start_sim(logs, model="slow-model", ttft_ms=150, itl_ms=5)
    yield s
    s.proc.stop()


def wait_final(client: openai.OpenAI, batch_id: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            return batch
        time.sleep(0.2)
    raise AssertionError(f"batch {batch_id} still {batch.status}")


def lines_of(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [orjson.loads(line) for line in client.files.content(file_id).read().splitlines()]


def submit(client: openai.OpenAI, lines: list[dict[str, Any]], **extra: Any) -> Any:
    upload = client.files.create(file=("input.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    return client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h", **extra
    )


def test_sdk_end_to_end(logs: Path, sim: Sim, tmp_path: Path) -> None:
    gw = gateway(logs, [sim], tmp_path)
    try:
        client = gw.client()
        upload = client.files.create(
            file=("input.jsonl", io.BytesIO(jsonl(requests(sim.model, 30)))), purpose="batch"
        )
        assert (upload.object, upload.purpose, upload.status) == ("file", "batch", "processed")
        assert client.files.retrieve(upload.id).bytes == upload.bytes
        created = client.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h",
            metadata={"project": "hearth-test"},
        )  # fmt: skip
        assert created.status == "validating"
        assert created.metadata == {"project": "hearth-test"}
        done = wait_final(client, created.id)
        assert done.status == "completed"
        assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (
            30,
            30,
            0,
        )
        assert done.error_file_id is None
        assert done.completed_at
        assert done.in_progress_at
        assert done.finalizing_at
        out = lines_of(client, done.output_file_id)
        assert [line["custom_id"] for line in out] == [f"req-{i}" for i in range(30)]
        for line in out:
            assert line["error"] is None
            assert line["id"].startswith("batch_req_")
            assert line["response"]["status_code"] == 200
            assert line["response"]["body"]["object"] == "chat.completion"
            assert line["response"]["body"]["usage"]["completion_tokens"] > 0
        assert client.files.retrieve(done.output_file_id).purpose == "batch_output"
        # pagination: two more batches, pages of one
        ids = {
            created.id,
            submit(client, requests(sim.model, 2)).id,
            submit(client, requests(sim.model, 2)).id,
        }
        seen, after = [], None
        while True:
            page = client.batches.list(limit=1, after=after) if after else client.batches.list(limit=1)
            seen += [b.id for b in page.data]
            if not page.has_more:
                break
            after = page.data[-1].id
        assert set(seen) == ids
        assert len(seen) == 3
    finally:
        gw.stop()


def test_malformed_file_fails_with_line_numbers(logs: Path, sim: Sim, tmp_path: Path) -> None:
    gw = gateway(logs, [sim], tmp_path)
    try:
        client = gw.client()
        good = requests(sim.model, 3)
        bad = [
            good[0],
            {**good[1], "custom_id": "req-0"},  # duplicate
            {**good[2], "url": "/v1/embeddings"},
            {**good[2], "custom_id": "x", "body": {**good[2]["body"], "model": "no-such-model"}},
        ]
        raw = jsonl(bad) + b"{not json\n"
        upload = client.files.create(file=("bad.jsonl", io.BytesIO(raw)), purpose="batch")
        batch = client.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        done = wait_final(client, batch.id)
        assert done.status == "failed"
        assert done.failed_at
        assert done.output_file_id is None
        errors = {(e.line, e.code) for e in done.errors.data}
        assert errors == {(2, "duplicate_custom_id"), (3, "invalid_url"), (4, "mismatched_model"),
                          (5, "invalid_json_line")}  # fmt: skip
    finally:
        gw.stop()


def test_every_line_failing_gives_only_an_error_file(logs: Path, tmp_path: Path) -> None:
    broken = start_sim(logs, model="broken-model", fail_status=400)
    gw = gateway(logs, [broken], tmp_path)
    try:
        client = gw.client()
        done = wait_final(client, submit(client, requests(broken.model, 5)).id)
        assert done.status == "completed"
        assert done.output_file_id is None
        assert (done.request_counts.completed, done.request_counts.failed) == (0, 5)
        errors = lines_of(client, done.error_file_id)
        assert [e["custom_id"] for e in errors] == [f"req-{i}" for i in range(5)]
        assert all(e["response"]["status_code"] == 400 and "error" in e["response"]["body"] for e in errors)
    finally:
        gw.stop()
        broken.proc.stop()


def test_cancel_keeps_finished_lines(logs: Path, slow: Sim, tmp_path: Path) -> None:
    gw = gateway(logs, [slow], tmp_path, line_concurrency=2)
    try:
        client = gw.client()
        batch = submit(client, requests(slow.model, 60))
        assert wait_for(lambda: client.batches.retrieve(batch.id).request_counts.completed >= 4, timeout=30)
        cancelling = client.batches.cancel(batch.id)
        assert cancelling.status == "cancelling"
        assert cancelling.cancelling_at
        done = wait_final(client, batch.id)
        assert done.status == "cancelled"
        assert done.cancelled_at
        out, errors = lines_of(client, done.output_file_id), lines_of(client, done.error_file_id)
        assert len(out) >= 4
        assert len(out) + len(errors) == 60
        assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}
        assert sorted(line["custom_id"] for line in out + errors) == sorted(f"req-{i}" for i in range(60))
    finally:
        gw.stop()


def test_expiry_ends_with_partial_results(logs: Path, slow: Sim, tmp_path: Path) -> None:
    gw = gateway(logs, [slow], tmp_path, line_concurrency=2)
    try:
        client = gw.client()
        batch = submit(client, requests(slow.model, 60))
        assert wait_for(lambda: client.batches.retrieve(batch.id).request_counts.completed >= 4, timeout=30)
        with sqlite3.connect(tmp_path / "hearth.db") as db:  # the window's end, reached early
            db.execute(
                "UPDATE batches SET expires_at = '2000-01-01 00:00:00.000000' WHERE id = ?", (batch.id,)
            )
        done = wait_final(client, batch.id)
        assert done.status == "expired"
        assert done.expired_at
        out, errors = lines_of(client, done.output_file_id), lines_of(client, done.error_file_id)
        assert len(out) >= 4
        assert len(out) + len(errors) == 60
        assert {e["error"]["code"] for e in errors} == {"batch_expired"}
    finally:
        gw.stop()


def test_gateway_killed_mid_batch_and_restarted(logs: Path, slow: Sim, tmp_path: Path) -> None:
    gw = gateway(logs, [slow], tmp_path, line_concurrency=4, lease_s=2)
    lines = requests(slow.model, 80)
    try:
        client = gw.client()
        batch = submit(client, lines)
        assert wait_for(lambda: client.batches.retrieve(batch.id).request_counts.completed >= 10, timeout=30)
    finally:
        gw.proc.kill()  # no clean shutdown: in-flight lines are lost with the process
    again = gateway(logs, [slow], tmp_path, line_concurrency=4, lease_s=2)
    try:
        client = again.client()
        done = wait_final(client, batch.id, timeout=90)
        assert done.status == "completed"
        out = lines_of(client, done.output_file_id)
        assert [line["custom_id"] for line in out] == [
            line["custom_id"] for line in lines
        ]  # one each, in order
        assert done.request_counts.completed == 80
        assert done.error_file_id is None
    finally:
        again.stop()


def test_a_replica_dies_and_another_takes_over(logs: Path, slow: Sim, tmp_path: Path) -> None:
    replicas = [gateway(logs, [slow], tmp_path, line_concurrency=4, lease_s=2) for _ in range(2)]
    lines = requests(slow.model, 80)
    try:
        batch = submit(replicas[0].client(), lines)

        def holder() -> str | None:
            with sqlite3.connect(tmp_path / "hearth.db") as db:
                row = db.execute("SELECT claimed_by FROM batches WHERE id = ?", (batch.id,)).fetchone()
            return row[0] if row else None

        client = replicas[0].client()
        assert wait_for(lambda: client.batches.retrieve(batch.id).request_counts.completed >= 10, timeout=30)
        claimed = holder()
        assert claimed is not None
        pid = int(claimed.split(":")[1])  # host:pid:random
        victim = next(r for r in replicas if r.proc.proc is not None and r.proc.proc.pid == pid)
        survivor = next(r for r in replicas if r is not victim)
        victim.proc.kill()
        done = wait_final(survivor.client(), batch.id, timeout=90)
        assert done.status == "completed"
        assert holder() is None or str(holder()).split(":")[1] != str(pid)
        out = lines_of(survivor.client(), done.output_file_id)
        errors = lines_of(survivor.client(), done.error_file_id)
        assert errors == []
        assert [line["custom_id"] for line in out] == [line["custom_id"] for line in lines]
    finally:
        for r in replicas:
            r.stop()


def test_other_users_ids_are_404(logs: Path, sim: Sim, tmp_path: Path) -> None:
    gw = gateway(logs, [sim], tmp_path)
    try:
        mine = gw.client()
        theirs = openai.OpenAI(base_url=gw.url, api_key=OTHER_KEY, max_retries=0)
        batch = submit(mine, requests(sim.model, 2))
        for call in (
            lambda: theirs.files.retrieve(batch.input_file_id),
            lambda: theirs.files.content(batch.input_file_id),
            lambda: theirs.files.delete(batch.input_file_id),
            lambda: theirs.batches.retrieve(batch.id),
            lambda: theirs.batches.cancel(batch.id),
            lambda: theirs.batches.create(
                input_file_id=batch.input_file_id, endpoint="/v1/chat/completions", completion_window="24h"
            ),
        ):
            with pytest.raises(openai.NotFoundError):
                call()
        assert theirs.batches.list().data == []
        assert theirs.files.list().data == []
        with pytest.raises(openai.BadRequestError):
            mine.batches.create(input_file_id=batch.input_file_id, endpoint="/v1/chat/completions",
                                completion_window="48h")  # type: ignore[arg-type]  # fmt: skip
    finally:
        gw.stop()


def test_upload_limits(logs: Path, sim: Sim, tmp_path: Path) -> None:
    gw = gateway(logs, [sim], tmp_path, max_file_bytes=20 * 1024 * 1024)
    try:
        client = gw.client()
        line = orjson.dumps(requests(sim.model, 1)[0]) + b"\n"
        big = line * (18 * 1024 * 1024 // len(line))  # over the 16 MiB request limit, under the file limit
        assert client.files.create(file=("big.jsonl", io.BytesIO(big)), purpose="batch").bytes == len(big)
        with pytest.raises(openai.APIStatusError) as info:
            client.files.create(file=("huge.jsonl", io.BytesIO(big + big)), purpose="batch")
        assert info.value.status_code == 413
        with pytest.raises(openai.BadRequestError):
            client.files.create(file=("x.jsonl", io.BytesIO(line)), purpose="fine-tune")
    finally:
        gw.stop()
