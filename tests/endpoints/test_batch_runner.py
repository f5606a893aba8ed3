"""Hearth's batch runner (`python -m endpoints.batch_runner`) as a real process against real sim
engines: every line answered once, resume after a torn line, signals, an engine that is down
or cannot start, and the engine the runner starts and stops itself."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from endpoints.batch_runner import EXIT_DONE, EXIT_ENGINE, EXIT_STOPPED
from endpoints.engines.base import WORKER_KEY_ENV, WORKER_PORT_ENV, EnvRef
from endpoints.engines.simulated import sim_launch
from tests.support.gateway import Sim, sim_metric, start_sim
from tests.support.procs import free_port


def write_input(path: Path, n: int, *, start: int = 1, model: str = "public-name") -> list[str]:
    ids = []
    with path.open("a") as f:
        for i in range(start, start + n):
            custom_id = f"{i}:req-{i}"
            body = {"model": model, "messages": [{"role": "user", "content": f"line {i}"}], "max_tokens": 2}
            f.write(json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
                                "body": body}) + "\n")  # fmt: skip
            ids.append(custom_id)
    return ids


def runner_argv(tmp_path: Path, *extra: str) -> list[str]:
    files = [f"--input={tmp_path / 'in.jsonl'}", f"--output={tmp_path / 'out.jsonl'}",
             f"--progress={tmp_path / 'progress.json'}"]  # fmt: skip
    return [sys.executable, "-m", "endpoints.batch_runner", *files, *extra]


def external(sim: Sim, tmp_path: Path) -> list[str]:
    key = tmp_path / "key"
    key.write_text(sim.api_key)
    return [f"--engine-url={sim.url}", f"--api-key-file={key}", f"--served-model={sim.model}"]


def run_runner(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def output(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]


def progress(tmp_path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((tmp_path / "progress.json").read_text())
    return data


def test_every_line_is_answered_once_with_the_served_model(sim: Sim, tmp_path: Path) -> None:
    ids = write_input(tmp_path / "in.jsonl", 60)
    done = run_runner(runner_argv(tmp_path, *external(sim, tmp_path), "--concurrency=8"))
    assert done.returncode == EXIT_DONE, done.stderr
    lines = output(tmp_path)
    assert sorted(x["custom_id"] for x in lines) == sorted(ids)
    for x in lines:
        assert x["id"].startswith("batch_req_")
        assert x["error"] is None
        response = x["response"]
        assert response["status_code"] == 200
        assert response["request_id"]
        assert response["body"]["model"] == sim.model  # the engine's name, not "public-name"
        assert response["body"]["usage"]["completion_tokens"] == 2
    size = (tmp_path / "out.jsonl").stat().st_size
    assert progress(tmp_path) | {"at": None} == {"done": 60, "total": 60, "durable_bytes": size, "at": None}


def test_resume_drops_a_torn_line_and_skips_answered_lines(sim: Sim, tmp_path: Path) -> None:
    write_input(tmp_path / "in.jsonl", 10)
    first = run_runner(runner_argv(tmp_path, *external(sim, tmp_path)))
    assert first.returncode == EXIT_DONE, first.stderr
    before = (tmp_path / "out.jsonl").read_bytes()
    ids = write_input(tmp_path / "in.jsonl", 20, start=11)
    # A process killed while writing line 11 left half of it behind.
    torn = json.dumps({"id": "batch_req_x", "custom_id": ids[0], "response": {"status_code": 200}})
    with (tmp_path / "out.jsonl").open("ab") as f:
        f.write(torn[: len(torn) // 2].encode())
    requests_before = sim_metric(sim, "hearth_sim_requests_total")

    again = run_runner(runner_argv(tmp_path, *external(sim, tmp_path)))
    assert again.returncode == EXIT_DONE, again.stderr
    assert "torn" in again.stderr
    data = (tmp_path / "out.jsonl").read_bytes()
    assert data.startswith(before)  # what was there stays, byte for byte
    counts = Counter(x["custom_id"] for x in output(tmp_path))
    assert len(counts) == 30
    assert set(counts.values()) == {1}
    assert sim_metric(sim, "hearth_sim_requests_total") - requests_before == 20  # only the new lines
    assert progress(tmp_path)["done"] == 30


def test_a_finished_batch_runs_nothing(sim: Sim, tmp_path: Path) -> None:
    write_input(tmp_path / "in.jsonl", 5)
    assert run_runner(runner_argv(tmp_path, *external(sim, tmp_path))).returncode == EXIT_DONE
    requests_before = sim_metric(sim, "hearth_sim_requests_total")
    again = run_runner(runner_argv(tmp_path, "--engine-command=exit 1"))  # never started: nothing to do
    assert again.returncode == EXIT_DONE, again.stderr
    assert sim_metric(sim, "hearth_sim_requests_total") == requests_before
    assert len(output(tmp_path)) == 5


def _managed_sim(ttft_ms: float, max_concurrency: int = 64) -> str:
    port = EnvRef(WORKER_PORT_ENV)
    launch = sim_launch("engine-model", "127.0.0.1", port, WORKER_KEY_ENV, ttft_ms=ttft_ms, itl_ms=0,
                        max_concurrency=max_concurrency, python=sys.executable)  # fmt: skip
    return launch.shell()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_a_signal_stops_it_without_losing_or_repeating_lines(tmp_path: Path, signum: int) -> None:
    ids = write_input(tmp_path / "in.jsonl", 600)
    argv = runner_argv(tmp_path, f"--engine-command={_managed_sim(20, max_concurrency=4)}", "--concurrency=4",
                       "--served-model=engine-model", "--stop-grace=1")  # fmt: skip
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "progress.json").exists() or progress(tmp_path)["done"] < 40:
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "the runner made no progress"
            time.sleep(0.05)
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert proc.returncode == EXIT_STOPPED, stderr
    port = int(stderr.split("starting the engine on port ")[1].split()[0])
    assert not _listening(port)  # the runner stopped its engine
    stopped = output(tmp_path)
    assert all(x["error"] is None and x["response"]["status_code"] == 200 for x in stopped)
    assert 40 <= len(stopped) < 600
    assert len({x["custom_id"] for x in stopped}) == len(stopped)
    assert progress(tmp_path)["durable_bytes"] == (tmp_path / "out.jsonl").stat().st_size

    resumed = run_runner(runner_argv(tmp_path, f"--engine-command={_managed_sim(0)}", "--concurrency=16"))
    assert resumed.returncode == EXIT_DONE, resumed.stderr
    assert f"{len(stopped)} already answered" in resumed.stderr
    counts = Counter(x["custom_id"] for x in output(tmp_path))
    assert sorted(counts) == sorted(ids)
    assert set(counts.values()) == {1}


def test_an_engine_that_is_down_gives_error_lines(tmp_path: Path) -> None:
    ids = write_input(tmp_path / "in.jsonl", 4)
    argv = runner_argv(tmp_path, f"--engine-url=http://127.0.0.1:{free_port()}/v1", "--retries=1",
                       "--retry-delay=0.01")  # fmt: skip
    done = run_runner(argv)
    assert done.returncode == EXIT_DONE, done.stderr
    lines = output(tmp_path)
    assert sorted(x["custom_id"] for x in lines) == sorted(ids)
    for x in lines:
        assert x["response"] is None
        assert x["error"]["code"] == "engine_unreachable"
        assert "2 attempts" in x["error"]["message"]


def test_an_engine_that_cannot_start_fails_the_run_and_answers_nothing(tmp_path: Path) -> None:
    write_input(tmp_path / "in.jsonl", 3)
    done = run_runner(runner_argv(tmp_path, "--engine-command=echo no GPU >&2; exit 7"))
    assert done.returncode == EXIT_ENGINE
    assert "the engine exited (status 7)" in done.stderr
    assert (tmp_path / "out.jsonl").read_text() == ""
    assert progress(tmp_path)["done"] == 0


def test_error_answers_and_bad_input_lines_are_lines_of_the_output(logs: Path, tmp_path: Path) -> None:
    refusing = start_sim(logs, model="refusing", fail_status=400)
    try:
        ids = write_input(tmp_path / "in.jsonl", 2)
        with (tmp_path / "in.jsonl").open("a") as f:
            f.write(
                json.dumps({"custom_id": "bad-url", "method": "POST", "url": "/admin", "body": {}}) + "\n"
            )
            f.write(json.dumps({"custom_id": "bad-body", "method": "POST", "url": "/v1/completions",
                                "body": "x"}) + "\n")  # fmt: skip
            f.write("not json\n")
            f.write(json.dumps({"method": "POST"}) + "\n")
        done = run_runner(runner_argv(tmp_path, *external(refusing, tmp_path)))
    finally:
        refusing.proc.stop()
    assert done.returncode == EXIT_DONE, done.stderr
    by_id = {x["custom_id"]: x for x in output(tmp_path)}
    assert set(by_id) == {*ids, "bad-url", "bad-body"}
    for custom_id in ids:  # the engine's refusal is the line's answer
        assert by_id[custom_id]["response"]["status_code"] == 400
        assert "Simulated failure" in by_id[custom_id]["response"]["body"]["error"]["message"]
    assert by_id["bad-url"]["error"]["code"] == "invalid_request"
    assert by_id["bad-body"]["error"]["code"] == "invalid_request"
    assert progress(tmp_path)["total"] == 4
