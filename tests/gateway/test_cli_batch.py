"""`hearth batch …` against a fake gateway on loopback.

`FakeOpenAIBatches` below is a TEST FAKE, defined and used only in this file: /v1/files and
/v1/batches as the OpenAI reference describes them (https://platform.openai.com/docs/api-reference/batch,
/files), with each batch moving one step each time it is polled: validating → in_progress (a
few lines a poll) → finalizing → completed. A line whose prompt contains "FAIL" gets a 400
answer (error file); "cancel" sends the unfinished lines to the error file as batch_cancelled.
The real gateway: tests/integration/test_batch_cli.py.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import pytest
from fastapi import FastAPI, Form, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from typer.testing import CliRunner, Result

from gateway import cli_batch
from gateway.cli import app
from tests.gateway.test_cli_login import save_login
from tests.support.threaded_server import ThreadedServer

KEYS = {"sk-alice": "alice", "sk-bob": "bob", "the-access-token": "alice"}  # the last: a saved login


def error(status: int, message: str, code: str | None = None, param: str | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


@dataclass
class FakeBatch:
    owner: str
    obj: dict[str, Any]
    lines: list[dict[str, Any]] = field(default_factory=list)
    done: list[dict[str, Any]] = field(default_factory=list)  # output lines
    errors: list[dict[str, Any]] = field(default_factory=list)  # error-file lines


class FakeOpenAIBatches:
    """TEST FAKE of the OpenAI Files and Batch APIs (see the module docstring)."""

    def __init__(self, *, lines_per_poll: int = 2) -> None:
        self.lines_per_poll = lines_per_poll
        self.files: dict[str, tuple[str, dict[str, Any], bytes]] = {}
        self.batches: dict[str, FakeBatch] = {}
        api = FastAPI()
        api.post("/v1/files")(self.upload)
        api.get("/v1/files/{file_id}")(self.get_file)
        api.get("/v1/files/{file_id}/content")(self.content)
        api.post("/v1/batches")(self.create)
        api.get("/v1/batches")(self.list)
        api.get("/v1/batches/{batch_id}")(self.get)
        api.post("/v1/batches/{batch_id}/cancel")(self.cancel)
        self._server = ThreadedServer(api).start()
        self.port, self.url = self._server.port, self._server.url

    def stop(self) -> None:
        self._server.stop()

    def uploaded(self, file_id: str) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.files[file_id][2].splitlines()]

    # --- routes ---

    def _owner(self, request: Request) -> str | None:
        return KEYS.get(request.headers.get("authorization", "").removeprefix("Bearer "))

    async def upload(self, request: Request, file: UploadFile, purpose: Annotated[str, Form()]) -> Any:
        owner = self._owner(request)
        if owner is None:
            return error(401, "Incorrect API key provided.", "invalid_api_key")
        if purpose != "batch":
            return error(400, f"'{purpose}' is not a supported purpose here.", param="purpose")
        data = await file.read()
        file_id = f"file-{uuid.uuid4().hex[:24]}"
        obj = {
            "id": file_id, "object": "file", "bytes": len(data), "created_at": int(time.time()),
            "expires_at": None, "filename": file.filename, "purpose": purpose,
        }  # fmt: skip
        self.files[file_id] = (owner, obj, data)
        return obj

    def _file(self, request: Request, file_id: str) -> tuple[str, dict[str, Any], bytes] | JSONResponse:
        owner = self._owner(request)
        if owner is None:
            return error(401, "Incorrect API key provided.", "invalid_api_key")
        found = self.files.get(file_id)
        if found is None or found[0] != owner:  # another user's file does not exist for you
            return error(404, f"No such File object: {file_id}", param="id")
        return found

    def get_file(self, request: Request, file_id: str) -> Any:
        found = self._file(request, file_id)
        return found if isinstance(found, JSONResponse) else found[1]

    def content(self, request: Request, file_id: str) -> Any:
        found = self._file(request, file_id)
        if isinstance(found, JSONResponse):
            return found
        return Response(found[2], media_type="application/octet-stream")

    async def create(self, request: Request) -> Any:
        owner = self._owner(request)
        if owner is None:
            return error(401, "Incorrect API key provided.", "invalid_api_key")
        body = await request.json()
        found = self._file(request, str(body.get("input_file_id")))
        if isinstance(found, JSONResponse):
            return found
        if body.get("completion_window") != "24h":
            return error(400, "completion_window must be 24h", param="completion_window")
        now = int(time.time())
        batch_id = f"batch_{uuid.uuid4().hex[:24]}"
        obj: dict[str, Any] = {
            "id": batch_id, "object": "batch", "endpoint": body["endpoint"], "errors": None,
            "input_file_id": body["input_file_id"], "completion_window": "24h", "status": "validating",
            "output_file_id": None, "error_file_id": None, "created_at": now, "in_progress_at": None,
            "expires_at": now + 86400, "finalizing_at": None, "completed_at": None, "failed_at": None,
            "expired_at": None, "cancelling_at": None, "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0}, "metadata": body.get("metadata"),
        }  # fmt: skip
        self.batches[batch_id] = FakeBatch(owner, obj)
        return obj

    def _batch(self, request: Request, batch_id: str) -> FakeBatch | JSONResponse:
        owner = self._owner(request)
        if owner is None:
            return error(401, "Incorrect API key provided.", "invalid_api_key")
        found = self.batches.get(batch_id)
        if found is None or found.owner != owner:
            return error(404, f"No such Batch object: {batch_id}", param="id")
        return found

    def get(self, request: Request, batch_id: str) -> Any:
        found = self._batch(request, batch_id)
        if isinstance(found, JSONResponse):
            return found
        self._advance(found)
        return found.obj

    def list(self, request: Request, after: str | None = None, limit: int = 20) -> Any:
        owner = self._owner(request)
        if owner is None:
            return error(401, "Incorrect API key provided.", "invalid_api_key")
        mine = [b.obj for b in reversed(self.batches.values()) if b.owner == owner]  # newest first
        start = next((i + 1 for i, b in enumerate(mine) if b["id"] == after), 0) if after else 0
        page = mine[start : start + max(1, min(100, limit))]
        return {
            "object": "list", "data": page, "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None, "has_more": start + len(page) < len(mine),
        }  # fmt: skip

    def cancel(self, request: Request, batch_id: str) -> Any:
        found = self._batch(request, batch_id)
        if isinstance(found, JSONResponse):
            return found
        if found.obj["status"] not in ("validating", "in_progress"):
            return error(409, f"Cannot cancel a batch with status {found.obj['status']}.")
        found.obj.update(status="cancelling", cancelling_at=int(time.time()))
        return found.obj

    # --- one step of a batch's life per poll ---

    def _advance(self, b: FakeBatch) -> None:
        obj, now = b.obj, int(time.time())
        if obj["status"] == "validating":
            problems = []
            for n, raw in enumerate(self.files[obj["input_file_id"]][2].splitlines(), 1):
                try:
                    line = json.loads(raw)
                    if (line["url"], line["method"]) != (obj["endpoint"], "POST"):
                        raise ValueError("wrong url or method")
                    b.lines.append(line)
                except (ValueError, KeyError):
                    problems.append(
                        {"code": "invalid_request", "message": "Bad line.", "param": None, "line": n}
                    )
            if {line["body"].get("model") for line in b.lines} != {"sim-model"}:
                problems.append(
                    {
                        "code": "model_not_found",
                        "message": "No such model.",
                        "param": "body.model",
                        "line": None,
                    }
                )
            if problems:
                obj.update(status="failed", failed_at=now, errors={"object": "list", "data": problems})
                return
            obj.update(status="in_progress", in_progress_at=now)
            obj["request_counts"]["total"] = len(b.lines)
        elif obj["status"] == "in_progress":
            for line in b.lines[len(b.done) + len(b.errors) :][: self.lines_per_poll]:
                prompt = json.dumps(line["body"])
                answer = {
                    "id": f"batch_req_{uuid.uuid4().hex[:12]}",
                    "custom_id": line["custom_id"],
                    "error": None,
                }
                if "FAIL" in prompt:
                    body = {
                        "error": {"message": "Bad prompt.", "type": "invalid_request_error", "code": None}
                    }
                    b.errors.append(
                        {**answer, "response": {"status_code": 400, "request_id": "req_x", "body": body}}
                    )
                else:
                    message = {"role": "assistant", "content": f"echo {prompt}"}
                    reply = {
                        "object": "chat.completion", "model": line["body"]["model"],
                        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                    }  # fmt: skip
                    b.done.append(
                        {**answer, "response": {"status_code": 200, "request_id": "req_y", "body": reply}}
                    )
            obj["request_counts"].update(completed=len(b.done), failed=len(b.errors))
            if len(b.done) + len(b.errors) == len(b.lines):
                obj.update(status="finalizing", finalizing_at=now)
        elif obj["status"] == "finalizing":
            self._write_files(b)
            obj.update(status="completed", completed_at=now)
        elif obj["status"] == "cancelling":
            for line in b.lines[len(b.done) + len(b.errors) :]:
                b.errors.append({
                    "id": f"batch_req_{uuid.uuid4().hex[:12]}", "custom_id": line["custom_id"],
                    "response": None,
                    "error": {"code": "batch_cancelled", "message": "The batch was cancelled first."},
                })  # fmt: skip
            obj["request_counts"]["failed"] = len(b.errors)
            self._write_files(b)
            obj.update(status="cancelled", cancelled_at=now)

    def _write_files(self, b: FakeBatch) -> None:
        for lines, key, name in ((b.done, "output_file_id", "output"), (b.errors, "error_file_id", "errors")):
            if lines:
                file_id = f"file-{uuid.uuid4().hex[:24]}"
                data = "".join(json.dumps(x) + "\n" for x in lines).encode()
                obj = {"id": file_id, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                       "filename": f"batch_{name}.jsonl", "purpose": "batch_output"}  # fmt: skip
                self.files[file_id] = (b.owner, obj, data)
                b.obj[key] = file_id


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAIBatches]:
    server = FakeOpenAIBatches()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_batch, "POLL_S", (0.01, 0.05))


def hearth(tmp_path: Path, *args: str, key: str | None = "sk-alice", url: str | None = None) -> Result:
    env = {"COLUMNS": "250", "HEARTH_CONFIG_DIR": str(tmp_path / "config"), "HEARTH_API_KEY": key or ""}
    env["HEARTH_URL"] = url or ""
    return CliRunner().invoke(app, ["batch", *args], env=env)


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output
    return result


def prompts(path: Path, *texts: str, model: str | None = "sim-model") -> Path:
    lines = []
    for n, text in enumerate(texts, 1):
        body: dict[str, Any] = {"messages": [{"role": "user", "content": text}]}
        if model:
            body["model"] = model
        lines.append(
            json.dumps({"custom_id": f"q{n}", "method": "POST", "url": "/v1/chat/completions", "body": body})
        )
    path.write_text("\n".join(lines) + "\n")
    return path


def batch_id_of(result: Result) -> str:
    return next(w.rstrip(".") for w in result.stdout.split() if w.startswith("batch_"))


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


# --- make ----------------------------------------------------------------------------------------


def test_make_text_to_stdout(tmp_path: Path) -> None:
    src = tmp_path / "prompts.txt"
    src.write_text("What is 2+2?\n\nÇa va?\n")
    result = ok(hearth(tmp_path, "make", str(src), "--model", "sim-model", "--max-tokens", "32"))
    lines = [json.loads(x) for x in result.stdout.splitlines()]
    assert [
        (x["custom_id"], x["body"]["messages"][0]["content"], x["body"]["max_tokens"]) for x in lines
    ] == [
        ("line-1", "What is 2+2?", 32),
        ("line-3", "Ça va?", 32),
    ]
    assert "2 requests for /v1/chat/completions." in result.stderr


def test_make_csv_to_a_file_then_submit_it(tmp_path: Path, fake: FakeOpenAIBatches) -> None:
    src = tmp_path / "questions.csv"
    src.write_text('id,question\nalpha,"Hello, ""world"""\nbeta,Why?\n', encoding="utf-8")
    dest = tmp_path / "questions.jsonl"
    result = ok(
        hearth(tmp_path, "make", str(src), "--column", "question", "--system", "Be brief.", "-o", str(dest))
    )
    assert f"2 requests for /v1/chat/completions in {dest}." in result.stderr
    assert "The lines name no model: give --model to `hearth batch submit`." in result.stderr
    assert [x["custom_id"] for x in jsonl(dest)] == ["alpha", "beta"]
    submitted = ok(hearth(tmp_path, "submit", str(dest), "--model", "sim-model", url=fake.url))
    file_id = next(w.rstrip(".") for w in submitted.stdout.split() if w.startswith("file-"))
    sent = fake.uploaded(file_id)
    assert [x["body"]["model"] for x in sent] == ["sim-model", "sim-model"]
    assert sent[0]["body"]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": 'Hello, "world"'},
    ]
    assert fake.files[file_id][1]["filename"] == "questions.jsonl"


def test_make_problems_are_one_line(tmp_path: Path) -> None:
    src = tmp_path / "p.csv"
    src.write_text("a,b\n1,2\n")
    result = hearth(tmp_path, "make", str(src))
    assert result.exit_code == 1
    assert result.stderr == "error: which column holds the prompts? give --column, one of: a, b\n"
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n")
    out = tmp_path / "never.jsonl"
    result = hearth(tmp_path, "make", str(blank), "-o", str(out))
    assert (result.exit_code, result.stderr) == (1, f"error: {blank} has no prompts\n")
    assert not out.exists()


# --- submit --wait -------------------------------------------------------------------------------


def test_submit_wait_output_downloads_the_results(tmp_path: Path, fake: FakeOpenAIBatches) -> None:
    src = prompts(tmp_path / "in.jsonl", "one", "two FAIL", "three", "four", "five")
    results = tmp_path / "results"
    result = ok(
        hearth(tmp_path, "submit", str(src), "--metadata", "project=alpha", "--wait",
               "--output", str(results), url=fake.url)
    )  # fmt: skip
    batch_id = batch_id_of(result)
    assert "Uploaded in.jsonl (5 requests, " in result.stdout
    assert f"Created batch {batch_id} (validating)." in result.stdout
    assert f"Batch {batch_id} completed in " in result.stdout
    assert ": 4 completed, 1 failed of 5." in result.stdout
    assert "4 completed, 1 failed of 5" in result.stderr  # the progress bar's last state
    output, errors = results / f"{batch_id}.output.jsonl", results / f"{batch_id}.errors.jsonl"
    assert f"Wrote {output} (" in result.stdout
    assert f"Wrote {errors} (" in result.stdout
    assert [x["custom_id"] for x in jsonl(output)] == ["q1", "q3", "q4", "q5"]
    assert all(x["response"]["status_code"] == 200 for x in jsonl(output))
    assert [(x["custom_id"], x["response"]["status_code"]) for x in jsonl(errors)] == [("q2", 400)]
    assert fake.batches[batch_id].obj["metadata"] == {"project": "alpha"}
    assert not list(results.glob("*.part"))


def test_submit_wait_without_output_says_how_to_download(tmp_path: Path, fake: FakeOpenAIBatches) -> None:
    src = prompts(tmp_path / "in.jsonl", "one")
    result = ok(hearth(tmp_path, "submit", str(src), "--wait", url=fake.url))
    batch_id = batch_id_of(result)
    assert f"Download the results with `hearth batch results {batch_id}`." in result.stdout
    assert not list(tmp_path.glob("batch_*"))


def test_submit_prompts_needs_make(tmp_path: Path, fake: FakeOpenAIBatches) -> None:
    src = tmp_path / "prompts.txt"
    src.write_text("first\nsecond FAIL\nthird\n")
    result = hearth(tmp_path, "submit", str(src), "--model", "sim-model", url=fake.url)
    assert result.exit_code == 2
    assert "looks like prompts, not batch JSONL: run `hearth batch make" in result.stderr
    assert "or add --make" in result.stderr
    result = ok(
        hearth(tmp_path, "submit", str(src), "--make", "--model", "sim-model", "--wait",
               "--output", str(tmp_path), url=fake.url)
    )  # fmt: skip
    batch_id = batch_id_of(result)
    assert "Uploaded prompts.txt (3 requests," in result.stdout
    assert [x["custom_id"] for x in jsonl(tmp_path / f"{batch_id}.output.jsonl")] == ["line-1", "line-3"]
    assert fake.files[fake.batches[batch_id].obj["input_file_id"]][1]["filename"] == "prompts.jsonl"


def test_submit_refuses_bad_input_before_uploading(tmp_path: Path, fake: FakeOpenAIBatches) -> None:
    before = len(fake.files)
    plain = tmp_path / "prompts.jsonl"
    plain.write_text("What is 2+2?\n")
    result = hearth(tmp_path, "submit", str(plain), url=fake.url)
    assert result.exit_code == 1
    assert "line 1 is not JSON" in result.stderr
    assert "`hearth batch make` turns them into batch JSONL (or add --make)" in result.stderr
    mixed = prompts(tmp_path / "mixed.jsonl", "a", "b", model=None)
    result = hearth(tmp_path, "submit", str(mixed), url=fake.url)
    assert result.exit_code == 1
    assert "line 1: body has no model (give --model)" in result.stderr
    big = prompts(tmp_path / "big.jsonl", "x" * 2_000_000)
    result = hearth(tmp_path, "submit", str(big), "--max-file-mib", "1", url=fake.url)
    assert result.exit_code == 1
    assert "the most a batch input may be is 1.0 MiB" in result.stderr
    assert len(fake.files) == before


def test_a_batch_the_gateway_refuses(tmp_path: Path, fake: FakeOpenAIBatches) -> None:
    src = prompts(tmp_path / "in.jsonl", "one", model="no-such-model")
    result = hearth(tmp_path, "submit", str(src), "--wait", url=fake.url)
    assert result.exit_code == 1
    assert f"Batch {batch_id_of(result)} failed" in result.stdout
    assert "No such model. (model_not_found)" in result.stderr
    result = hearth(tmp_path, "results", batch_id_of(result), url=fake.url)
    assert result.exit_code == 1
    assert "is failed and has no result files" in result.stderr


def test_ctrl_c_stops_waiting_not_the_batch(
    tmp_path: Path, fake: FakeOpenAIBatches, monkeypatch: pytest.MonkeyPatch
) -> None:
    polls = []

    def sleep(seconds: float) -> None:
        polls.append(seconds)
        if len(polls) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr("gateway.client.batch.time.sleep", sleep)
    src = prompts(tmp_path / "in.jsonl", *(f"p{i}" for i in range(20)))
    result = hearth(tmp_path, "submit", str(src), "--wait", url=fake.url)
    batch_id = batch_id_of(result)
    assert result.exit_code == 130
    assert f"Stopped waiting; batch {batch_id} keeps running." in result.stderr
    assert f"`hearth batch status {batch_id}`" in result.stderr
    assert fake.batches[batch_id].obj["status"] == "in_progress"


# --- list / status / results / cancel ------------------------------------------------------------


def test_status_results_and_list(tmp_path: Path, fake: FakeOpenAIBatches) -> None:
    src = prompts(tmp_path / "in.jsonl", *(f"p{i}" for i in range(6)))
    batch_id = batch_id_of(ok(hearth(tmp_path, "submit", str(src), "--metadata", "run=7", url=fake.url)))
    early = hearth(tmp_path, "results", batch_id, "--output", str(tmp_path), url=fake.url)
    assert early.exit_code == 1
    assert f"batch {batch_id} is in_progress: its results are written when it ends" in early.stderr
    status = ok(hearth(tmp_path, "status", batch_id, url=fake.url)).stdout
    assert "in_progress" in status
    assert "2 completed, 0 failed of 6" in status
    assert "run=7" in status
    as_json = json.loads(ok(hearth(tmp_path, "status", batch_id, "--json", url=fake.url)).stdout)
    assert (as_json["status"], as_json["request_counts"]["completed"]) == ("in_progress", 4)
    assert "finalizing" in ok(hearth(tmp_path, "status", batch_id, url=fake.url)).stdout
    got = ok(hearth(tmp_path, "results", batch_id, "--output", str(tmp_path / "r"), url=fake.url))
    assert f"{batch_id}.output.jsonl" in got.stdout
    assert "errors.jsonl" not in got.stdout
    assert len(jsonl(tmp_path / "r" / f"{batch_id}.output.jsonl")) == 6
    listed = ok(hearth(tmp_path, "list", "--limit", "2", url=fake.url)).stdout
    assert batch_id in listed
    assert "run=7" in listed
    assert sum(w.startswith("batch_") for w in listed.split()) == 2


def test_list_shows_only_yours(tmp_path: Path, fake: FakeOpenAIBatches) -> None:
    src = prompts(tmp_path / "in.jsonl", "x")
    mine = {
        batch_id_of(ok(hearth(tmp_path, "submit", str(src), key="sk-bob", url=fake.url))) for _ in range(3)
    }
    listed = ok(hearth(tmp_path, "list", "--limit", "500", key="sk-bob", url=fake.url)).stdout
    assert {w for w in listed.split() if w.startswith("batch_")} == mine  # bob's only


def test_cancel_keeps_finished_lines(tmp_path: Path, fake: FakeOpenAIBatches) -> None:
    src = prompts(tmp_path / "in.jsonl", *(f"p{i}" for i in range(5)))
    batch_id = batch_id_of(ok(hearth(tmp_path, "submit", str(src), url=fake.url)))
    ok(hearth(tmp_path, "status", batch_id, url=fake.url))  # in_progress
    ok(hearth(tmp_path, "status", batch_id, url=fake.url))  # 2 lines done
    result = ok(hearth(tmp_path, "cancel", batch_id, url=fake.url))
    assert f"Batch {batch_id} is cancelling: lines already finished are kept" in result.stdout
    ok(hearth(tmp_path, "results", batch_id, "--output", str(tmp_path), url=fake.url))
    assert len(jsonl(tmp_path / f"{batch_id}.output.jsonl")) == 2
    cancelled = jsonl(tmp_path / f"{batch_id}.errors.jsonl")
    assert [x["error"]["code"] for x in cancelled] == ["batch_cancelled"] * 3
    again = hearth(tmp_path, "cancel", batch_id, url=fake.url)
    assert (again.exit_code, again.stderr) == (1, "error: Cannot cancel a batch with status cancelled.\n")


# --- credentials ---------------------------------------------------------------------------------


def test_only_the_owner_sees_a_batch(tmp_path: Path, fake: FakeOpenAIBatches) -> None:
    src = prompts(tmp_path / "in.jsonl", "x")
    batch_id = batch_id_of(ok(hearth(tmp_path, "submit", str(src), url=fake.url)))
    for command in (["status", batch_id], ["results", batch_id], ["cancel", batch_id]):
        result = hearth(tmp_path, *command, key="sk-bob", url=fake.url)
        assert (result.exit_code, result.stderr) == (1, f"error: No such Batch object: {batch_id}\n")


def test_a_wrong_key(tmp_path: Path, fake: FakeOpenAIBatches) -> None:
    result = hearth(tmp_path, "list", key="sk-nobody", url=fake.url)
    assert result.exit_code == 1
    assert result.stderr == "error: Incorrect API key provided. (run `hearth login` to sign in again)\n"


def test_the_login_is_used_without_a_key(tmp_path: Path, fake: FakeOpenAIBatches) -> None:
    store = save_login(tmp_path / "config")  # "the-access-token", valid for an hour
    login = store.load()
    assert login is not None
    store.save(dataclasses.replace(login, gateway=fake.url))
    src = prompts(tmp_path / "in.jsonl", "x")
    ok(hearth(tmp_path, "submit", str(src), key=None))
    # the API key goes to the login's gateway when no --gateway is given
    ok(hearth(tmp_path, "list", key="sk-bob"))
    # but the login's token is never sent to another gateway
    result = hearth(tmp_path, "list", key=None, url="http://127.0.0.1:9/v1")
    assert result.exit_code == 2
    assert result.stderr.startswith(
        f"error: you are logged in to {fake.url}, not http://127.0.0.1:9: give --api-key"
    )


def test_no_credential(tmp_path: Path) -> None:
    result = hearth(tmp_path, "list", key=None)
    assert (result.exit_code, result.stderr) == (
        2,
        "error: not logged in: run `hearth login --gateway URL`, or give --api-key (or HEARTH_API_KEY)\n",
    )
    result = hearth(tmp_path, "list")
    assert (result.exit_code, result.stderr) == (
        2,
        "error: give --gateway URL (or HEARTH_URL) with --api-key\n",
    )


def test_option_mistakes(tmp_path: Path) -> None:
    src = prompts(tmp_path / "in.jsonl", "x")
    for args, message in (
        (["--output", str(tmp_path)], "only with --wait"),
        (["--endpoint", "/v1/responses"], "one of /v1/chat/completions"),
        (["--metadata", "novalue"], "is not key=value"),
        (["--make"], "--make needs --model"),
    ):
        result = hearth(tmp_path, "submit", str(src), *args, url="http://127.0.0.1:9")
        assert result.exit_code == 2, result.output
        assert message in result.output
