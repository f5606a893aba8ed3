"""`hearth admin usage | audit | limits` against a real store."""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from gateway.cli import app
from gateway.store.audit import AuditLog
from gateway.store.database import Database
from gateway.store.usage import UsageRecord, UsageRecorder


@pytest.fixture
def config(tmp_path: Path) -> Path:
    url = f"sqlite:///{tmp_path / 'hearth.db'}"
    path = tmp_path / "hearth.yaml"
    path.write_text(yaml.safe_dump({
        "store": {"url": url},
        "limits": {"user": {"requests_per_minute": 60}, "models": {"big": {"concurrent_requests": 4}}},
    }))  # fmt: skip

    async def fill() -> None:
        db = Database(url)
        await db.migrate()
        recorder = UsageRecorder(db)
        for i, (user, model) in enumerate([("alice", "big"), ("alice", "small"), ("bob", "big")] * 4):
            recorder.record(UsageRecord(
                ts=datetime.now(UTC), request_id=str(i), user=user, api_key_id=None, model=model,
                cluster="polaris", upstream="u", endpoint="chat.completions", status=200 if i % 6 else 502,
                prompt_tokens=10, completion_tokens=5, latency_ms=1.0, ttft_ms=None, stream=False,
            ))  # fmt: skip
        await recorder.flush()
        audit = AuditLog(db)
        audit.log("alice-id", "key.create", "ok", target="k1")
        audit.log("carol-id", "auth.token", "deny", detail="requires membership in the Globus group g")
        await audit.flush()
        await db.close()

    asyncio.run(fill())
    return path


def run(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


def test_usage_csv_by_user_and_model(config: Path) -> None:
    # The first round of a fresh store only notes where the events end; the second counts them.
    run("admin", "usage", "--config", str(config))
    text = run(
        "admin", "usage", "--by", "user", "--by", "model", "--since", "1d", "--csv", "--config", str(config)
    )
    rows = list(csv.DictReader(io.StringIO(text)))
    got = {
        (r["user"], r["model"]): (int(r["requests"]), int(r["errors"]), int(r["total_tokens"])) for r in rows
    }
    assert got == {("alice", "big"): (4, 2, 60), ("alice", "small"): (4, 0, 60), ("bob", "big"): (4, 0, 60)}


def test_usage_table_and_bad_grouping(config: Path) -> None:
    run("admin", "usage", "--config", str(config))
    assert "polaris" in run("admin", "usage", "--by", "cluster", "--config", str(config))
    result = CliRunner().invoke(app, ["admin", "usage", "--by", "colour", "--config", str(config)])
    assert result.exit_code != 0
    assert "--by must be among" in result.output


def test_audit(config: Path) -> None:
    text = run("admin", "audit", "--csv", "--config", str(config))
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [(r["actor"], r["action"]) for r in rows] == [
        ("carol-id", "auth.token"),
        ("alice-id", "key.create"),
    ]
    only = list(
        csv.DictReader(
            io.StringIO(run("admin", "audit", "--csv", "--action", "key.", "--config", str(config)))
        )
    )
    assert [r["target"] for r in only] == ["k1"]


def test_limits(config: Path) -> None:
    text = run("admin", "limits", "--config", str(config))
    assert "every user (default)" in text
    assert "60" in text
    assert "model big" in text
    assert "fail open" in text
