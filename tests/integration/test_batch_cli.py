"""The real `hearth batch` command, as a subprocess, against a real gateway (`hearth serve`) with
the sim engine as its worker: make, submit --wait with the results downloaded, list, status,
cancel. The commands against a fake gateway: tests/gateway/test_cli_batch.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.gateway import Gateway, Sim, start_gateway, upstream

pytestmark = pytest.mark.timeout(180)

HEARTH = Path(sys.executable).with_name("hearth")  # the console script of this environment
OTHER_KEY = "sk-other-user-batch-cli"


@pytest.fixture(scope="module")
def gw(logs: Path, sim: Sim, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("batch-cli")
    g = start_gateway(
        logs,
        clusters={"local": {"upstreams": [upstream(sim, "sim", models=[sim.model])]}},
        store_url=f"sqlite:///{tmp / 'hearth.db'}",
        batch={"files_dir": str(tmp / "files"), "line_concurrency": 2},  # slow enough to cancel
        extra_keys=[{"owner": "other", "key": OTHER_KEY}],
    )
    yield g
    g.stop()


def hearth(
    gw: Gateway, tmp_path: Path, *args: str, key: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "HEARTH_URL": gw.url,
        "HEARTH_API_KEY": key or gw.api_key,
        "HEARTH_CONFIG_DIR": str(tmp_path / "config"),  # no login: the key is the credential
        "COLUMNS": "200",
    }
    return subprocess.run(
        [str(HEARTH), "batch", *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def batch_id_of(result: subprocess.CompletedProcess[str]) -> str:
    return next(w.rstrip(".") for w in result.stdout.split() if w.startswith("batch_"))


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_submit_wait_downloads_output_and_errors(gw: Gateway, sim: Sim, tmp_path: Path) -> None:
    lines = [
        {
            "custom_id": f"q{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": sim.model, "messages": [{"role": "user", "content": f"question {i}"}],
                     "max_tokens": 100_000 if i == 3 else 4},
        }
        for i in range(8)
    ]  # fmt: skip
    src = tmp_path / "prompts.jsonl"
    src.write_text("".join(json.dumps(x) + "\n" for x in lines))
    results = tmp_path / "results"
    result = ok(
        hearth(
            gw, tmp_path, "submit", str(src), "--metadata", "project=cli", "--wait", "--output", str(results)
        )
    )
    batch_id = batch_id_of(result)
    assert "Uploaded prompts.jsonl (8 requests," in result.stdout
    assert f"Batch {batch_id} completed in " in result.stdout
    assert ": 7 completed, 1 failed of 8." in result.stdout
    output = jsonl(results / f"{batch_id}.output.jsonl")
    assert [x["custom_id"] for x in output] == [f"q{i}" for i in range(8) if i != 3]
    assert all(x["response"]["status_code"] == 200 for x in output)
    assert all(x["response"]["body"]["object"] == "chat.completion" for x in output)
    (failed,) = jsonl(results / f"{batch_id}.errors.jsonl")
    assert failed["custom_id"] == "q3"
    assert failed["response"]["status_code"] == 400

    status = json.loads(ok(hearth(gw, tmp_path, "status", batch_id, "--json")).stdout)
    assert status["metadata"] == {"project": "cli"}
    assert status["request_counts"] == {"total": 8, "completed": 7, "failed": 1}
    assert batch_id in ok(hearth(gw, tmp_path, "list")).stdout
    cancel = ok(hearth(gw, tmp_path, "cancel", batch_id))
    assert cancel.stdout == f"Batch {batch_id} is already completed; there is nothing to cancel.\n"
    # only its owner sees it
    other = hearth(gw, tmp_path, "status", batch_id, key=OTHER_KEY)
    assert other.returncode == 1
    assert other.stderr == f"error: No batch found with id '{batch_id}'.\n"
    assert batch_id not in ok(hearth(gw, tmp_path, "list", key=OTHER_KEY)).stdout


def test_make_then_submit_prompts_on_the_fly(gw: Gateway, sim: Sim, tmp_path: Path) -> None:
    src = tmp_path / "questions.csv"
    src.write_text('id,prompt\nalpha,"Hello, ""world"""\nbeta,"two\nlines"\ngamma,日本語\n', encoding="utf-8")
    made = ok(hearth(gw, tmp_path, "make", str(src), "--model", sim.model, "--max-tokens", "4"))
    assert [json.loads(x)["custom_id"] for x in made.stdout.splitlines()] == ["alpha", "beta", "gamma"]
    result = ok(
        hearth(
            gw, tmp_path, "submit", str(src), "--make", "--model", sim.model, "--max-tokens", "4", "--wait"
        )
    )
    batch_id = batch_id_of(result)
    assert ": 3 completed, 0 failed of 3." in result.stdout
    assert f"`hearth batch results {batch_id}`" in result.stdout
    got = ok(hearth(gw, tmp_path, "results", batch_id, "--output", str(tmp_path)))
    assert "errors.jsonl" not in got.stdout
    assert [x["custom_id"] for x in jsonl(tmp_path / f"{batch_id}.output.jsonl")] == [
        "alpha",
        "beta",
        "gamma",
    ]


def test_the_gateway_refuses_an_unknown_model(gw: Gateway, tmp_path: Path) -> None:
    src = tmp_path / "prompts.txt"
    src.write_text("hello\n")
    result = hearth(gw, tmp_path, "submit", str(src), "--make", "--model", "no-such-model", "--wait")
    assert result.returncode == 1
    assert f"Batch {batch_id_of(result)} failed" in result.stdout
    assert "(model_not_found)" in result.stderr


def test_cancel_keeps_what_finished(gw: Gateway, sim: Sim, tmp_path: Path) -> None:
    src = tmp_path / "many.txt"
    src.write_text("".join(f"prompt {i}\n" for i in range(2000)))
    batch_id = batch_id_of(
        ok(hearth(gw, tmp_path, "submit", str(src), "--make", "--model", sim.model, "--max-tokens", "2"))
    )
    deadline = time.monotonic() + 30
    while (
        json.loads(ok(hearth(gw, tmp_path, "status", batch_id, "--json")).stdout)["request_counts"][
            "completed"
        ]
        == 0
    ):
        assert time.monotonic() < deadline, "no line finished"
    cancel = ok(hearth(gw, tmp_path, "cancel", batch_id))
    assert cancel.stdout.startswith(f"Batch {batch_id} is cancelling: lines already finished are kept;")
    while (batch := json.loads(ok(hearth(gw, tmp_path, "status", batch_id, "--json")).stdout))[
        "status"
    ] != "cancelled":
        assert time.monotonic() < deadline + 30, batch["status"]
    ok(hearth(gw, tmp_path, "results", batch_id, "--output", str(tmp_path)))
    done = jsonl(tmp_path / f"{batch_id}.output.jsonl")
    errors = jsonl(tmp_path / f"{batch_id}.errors.jsonl")
    assert len(done) == batch["request_counts"]["completed"] > 0
    assert len(errors) == batch["request_counts"]["failed"] > 0
    assert len(done) + len(errors) == 2000
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}
    assert {x["custom_id"] for x in done + errors} == {f"line-{i}" for i in range(1, 2001)}
