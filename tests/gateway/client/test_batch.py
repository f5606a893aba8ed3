"""gateway.client.batch: making and checking input files, progress maths, and the Files/Batch calls
against canned answers (httpx.MockTransport). The commands over a fake gateway:
tests/gateway/test_cli_batch.py."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.client.api import GatewayError
from gateway.client.batch import (
    BatchClient,
    BatchInputError,
    BearerKey,
    Progress,
    ProgressMeter,
    check_input,
    input_kind,
    looks_like_prompts,
    make_jsonl,
    make_jsonl_from,
    parse_metadata,
    prepare_input,
    set_model,
    write_lines,
)

Handler = Callable[[httpx.Request], httpx.Response]


def client(handler: Handler) -> BatchClient:
    return BatchClient(
        "https://hearth.example.org/v1", transport=httpx.MockTransport(handler), auth=BearerKey("sk-1")
    )


def parsed(lines: Iterator[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines]


def user_prompts(lines: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(x["custom_id"], x["body"]["messages"][-1]["content"]) for x in lines]


def batch(status: str, total: int = 0, completed: int = 0, failed: int = 0, **extra: Any) -> dict[str, Any]:
    counts = {"total": total, "completed": completed, "failed": failed}
    return {"id": "batch_1", "object": "batch", "status": status, "request_counts": counts, **extra}


# --- make_jsonl: plain text ----------------------------------------------------------------------


def test_text_one_prompt_a_line_numbered_by_source_line() -> None:
    source = io.StringIO("What is 2+2?\n\n   \nNamme the capital of France\r\nlast line without newline")
    lines = parsed(make_jsonl(source, "llama"))
    assert user_prompts(lines) == [
        ("line-1", "What is 2+2?"),
        ("line-4", "Namme the capital of France"),
        ("line-5", "last line without newline"),
    ]
    assert lines[0] == {
        "custom_id": "line-1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "llama", "messages": [{"role": "user", "content": "What is 2+2?"}]},
    }


def test_text_keeps_unicode_quotes_and_backslashes_on_one_line() -> None:
    prompt = 'Übersetze „Grüße" ins 日本語 — with "quotes", a \\ backslash and an emoji 🧪\u2028'
    (line,) = make_jsonl([prompt + "\n"], "m")
    assert "\n" not in line
    assert "日本語" in line  # written as UTF-8, not \u escapes
    assert json.loads(line)["body"]["messages"][0]["content"] == prompt


def test_text_drops_a_byte_order_mark() -> None:
    lines = parsed(make_jsonl(["\ufeffhello\n", "world\n"], "m"))
    assert user_prompts(lines) == [("line-1", "hello"), ("line-2", "world")]


def test_system_prompt_and_max_tokens() -> None:
    (line,) = parsed(make_jsonl(["hi"], "m", system="Be brief.", max_tokens=64))
    assert line["body"] == {
        "model": "m",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        "max_tokens": 64,
    }


def test_completions_and_embeddings_bodies() -> None:
    (completion,) = parsed(make_jsonl(["Once upon"], "m", endpoint="/v1/completions", max_tokens=5))
    assert completion["url"] == "/v1/completions"
    assert completion["body"] == {"model": "m", "prompt": "Once upon", "max_tokens": 5}
    (embedding,) = parsed(make_jsonl(["a cell"], "e5", endpoint="/v1/embeddings"))
    assert embedding["body"] == {"model": "e5", "input": "a cell"}


def test_without_a_model_the_body_names_none() -> None:
    (line,) = parsed(make_jsonl(["hi"]))
    assert "model" not in line["body"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"endpoint": "/v1/responses"}, "is not one of"),
        ({"endpoint": "/v1/embeddings", "system": "x"}, "system prompt needs"),
        ({"endpoint": "/v1/embeddings", "max_tokens": 5}, "embeddings take none"),
        ({"max_tokens": 0}, "at least 1"),
    ],
)
def test_options_that_do_not_fit(options: dict[str, Any], message: str) -> None:
    with pytest.raises(BatchInputError, match=message):
        list(make_jsonl(["hi"], "m", **options))


# --- make_jsonl: CSV and TSV ---------------------------------------------------------------------


def test_csv_quoting_commas_newlines_and_unicode() -> None:
    text = (
        "id,prompt,notes\r\n"
        'q1,"Hello, world",x\r\n'
        'q2,"She said ""hi""\nand left",\r\n'
        "q3,Ça va? 你好,\r\n"
        "q4,,empty prompt: left out\r\n"
        "\r\n"
        "q5,   ,blank prompt: left out\r\n"
        "q6,last,\r\n"
    )
    lines = parsed(make_jsonl(io.StringIO(text, newline=""), "m", kind="csv"))
    assert user_prompts(lines) == [
        ("q1", "Hello, world"),
        ("q2", 'She said "hi"\nand left'),
        ("q3", "Ça va? 你好"),
        ("q6", "last"),
    ]


def test_csv_without_an_id_column_numbers_data_rows() -> None:
    text = "question,source\nWhy?,a\n,b\nHow?,c\n"
    lines = parsed(make_jsonl(io.StringIO(text), "m", kind="csv", column="question"))
    assert user_prompts(lines) == [("row-1", "Why?"), ("row-3", "How?")]


def test_csv_custom_id_column_is_preferred_and_another_can_be_named() -> None:
    text = "custom_id,id,prompt,key\na,1,x,k1\nb,2,y,k2\n"
    assert [x["custom_id"] for x in parsed(make_jsonl(io.StringIO(text), "m", kind="csv"))] == ["a", "b"]
    named = parsed(make_jsonl(io.StringIO(text), "m", kind="csv", id_column="key"))
    assert [x["custom_id"] for x in named] == ["k1", "k2"]


def test_csv_single_column_without_a_prompt_header() -> None:
    lines = parsed(make_jsonl(io.StringIO("\ufefftext\nfirst\nsecond\n"), "m", kind="csv"))
    assert user_prompts(lines) == [("row-1", "first"), ("row-2", "second")]


def test_tsv() -> None:
    text = "id\tprompt\nt1\ta, b, c\nt2\tsecond\n"
    lines = parsed(make_jsonl(io.StringIO(text), "m", kind="tsv"))
    assert user_prompts(lines) == [("t1", "a, b, c"), ("t2", "second")]


@pytest.mark.parametrize(
    ("text", "options", "message"),
    [
        ("", {}, "has no header row"),
        ("a,b\n1,2\n", {}, "give --column, one of: a, b"),
        ("prompt\nx\n", {"column": "question"}, "no column 'question'; the columns are: prompt"),
        ("prompt\nx\n", {"id_column": "key"}, "no column 'key'"),
        ("id,prompt\n1,x\n1,y\n", {}, "row 2: id '1' is used twice"),
        ("id,prompt\n1,x\n,y\n", {}, "row 2 has no id"),
        ("prompt\n" + "x" * 200_000 + "\n", {}, r"CSV line 2: field larger than field limit"),
    ],
)
def test_csv_problems(text: str, options: dict[str, Any], message: str) -> None:
    with pytest.raises(BatchInputError, match=message):
        list(make_jsonl(io.StringIO(text, newline=""), "m", kind="csv", **options))


def test_make_from_files_by_suffix(tmp_path: Path) -> None:
    assert [input_kind(Path(p)) for p in ("a.csv", "b.TSV", "c.txt", "d")] == ["csv", "tsv", "text", "text"]
    csv_file = tmp_path / "prompts.csv"
    csv_file.write_bytes('\ufeffprompt\n"two\r\nlines"\n'.encode())  # as Excel writes it
    assert user_prompts(parsed(make_jsonl_from(csv_file, "m"))) == [("row-1", "two\r\nlines")]
    txt = tmp_path / "prompts.txt"
    txt.write_bytes(b"caf\xe9\n")  # Latin-1, not UTF-8
    with pytest.raises(BatchInputError, match="is not UTF-8 text"):
        list(make_jsonl_from(txt, "m"))
    with pytest.raises(BatchInputError, match="cannot read"):
        list(make_jsonl_from(tmp_path / "missing.txt", "m"))


def test_made_lines_pass_the_check(tmp_path: Path) -> None:
    dest = tmp_path / "out.jsonl"
    source = io.StringIO('id,prompt\nz,"x, y"\nw,日本\n', newline="")
    assert write_lines(make_jsonl(source, "m", kind="csv", system="s"), dest) == 2
    check = check_input(dest, "/v1/chat/completions")
    assert (check.lines, check.models, check.problems) == (2, {"m"}, [])
    assert dest.read_bytes().endswith(b"\n")
    assert not list(tmp_path.glob(".*part"))


def test_write_lines_is_all_or_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "out.jsonl"
    dest.write_text("old\n")

    def broken() -> Iterator[str]:
        yield "{}"
        raise BatchInputError("row 2 has no id")

    with pytest.raises(BatchInputError):
        write_lines(broken(), dest)
    assert dest.read_text() == "old\n"
    assert list(tmp_path.iterdir()) == [dest]


# --- check_input / set_model / metadata ----------------------------------------------------------


def write(path: Path, *lines: Any) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def line(custom_id: str, model: str | None = "m", url: str = "/v1/chat/completions") -> dict[str, Any]:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}]}
    if model:
        body["model"] = model
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def test_check_input_names_the_problems(tmp_path: Path) -> None:
    path = write(
        tmp_path / "in.jsonl",
        line("a"),
        "",
        "not json",
        "[1, 2]",
        line("a"),
        {**line("b"), "method": "GET"},
        line("c", url="/v1/embeddings"),
        {"custom_id": "d", "method": "POST", "url": "/v1/chat/completions"},
        line("e", model=None),
        line("f", model="other"),
        {**line("g"), "body": {**line("g")["body"], "stream": True}},
    )
    check = check_input(path, "/v1/chat/completions")
    assert check.lines == 11
    assert check.problems == [
        "line 2 is empty",
        "line 3 is not JSON",
        "line 4 is not a JSON object",
        "line 5: custom_id 'a' is used twice",
        'line 6: method must be "POST"',
        "line 7: url is '/v1/embeddings', not the batch's endpoint '/v1/chat/completions'",
        "line 8 has no body object",
        "line 9: body has no model (give --model)",
        "line 11: a batch cannot stream (remove body.stream)",
        "the lines ask for 2 models (m, other); a batch runs one: give --model",
    ]
    assert len(check_input(path, "/v1/chat/completions", max_problems=3).problems) == 3


def test_check_input_with_a_model_to_set(tmp_path: Path) -> None:
    path = write(tmp_path / "in.jsonl", line("a", model=None), line("b", model="x"), line("c", model="y"))
    check = check_input(path, "/v1/chat/completions", model="llama")
    assert check.problems == []
    dest = tmp_path / "llama.jsonl"
    assert set_model(path, "llama", dest) == 3
    assert {json.loads(x)["body"]["model"] for x in dest.read_text().splitlines()} == {"llama"}
    assert check_input(dest, "/v1/chat/completions").models == {"llama"}


def test_check_input_empty_and_missing(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert check_input(empty, "/v1/chat/completions").problems == [f"{empty} is empty"]
    with pytest.raises(BatchInputError, match="cannot read"):
        check_input(tmp_path / "missing.jsonl", "/v1/chat/completions")


def test_prepare_input(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    chat = "/v1/chat/completions"
    good = write(tmp_path / "good.jsonl", line("a"), line("b"))
    same = prepare_input(good, work, chat)
    assert (same.path, same.filename, same.check.lines, same.check.problems) == (good, "good.jsonl", 2, [])
    assert prepare_input(good, work, chat, model="m").path == good  # already asks for it: no copy
    other = prepare_input(good, work, chat, model="org/big")
    assert other.filename == "good.jsonl"
    assert other.path.parent == work
    assert {json.loads(x)["body"]["model"] for x in other.path.read_text().splitlines()} == {"org/big"}
    bad = write(tmp_path / "bad.jsonl", line("a"), "oops")
    refused = prepare_input(bad, work, chat, model="m")
    assert (refused.path, refused.check.problems) == (bad, ["line 2 is not JSON"])
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("prompt\nhi\n")
    assert looks_like_prompts(prompts)
    made = prepare_input(prompts, work, chat, model="m", make={"system": None, "max_tokens": 8})
    assert (made.path, made.filename, made.check.models) == (work / "prompts.jsonl", "prompts.jsonl", {"m"})
    assert json.loads(made.path.read_text())["body"]["max_tokens"] == 8
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(BatchInputError, match="has no prompts"):
        prepare_input(empty, work, chat, model="m", make={})
    assert not looks_like_prompts(good)


def test_parse_metadata() -> None:
    assert parse_metadata(["project=alpha", "run=2=b", "empty="]) == {
        "project": "alpha",
        "run": "2=b",
        "empty": "",
    }
    for bad in (["novalue"], ["=x"], ["k" * 65 + "=v"], ["k=" + "v" * 513], [f"k{i}=v" for i in range(17)]):
        with pytest.raises(BatchInputError):
            parse_metadata(bad)


# --- progress maths ------------------------------------------------------------------------------


def test_progress_rate_and_eta() -> None:
    meter = ProgressMeter(window=60)
    first = meter.update(batch("in_progress", 1000, 100, 0), now=0.0)
    assert (first.done, first.rate, first.eta, first.fraction) == (100, None, None, 0.1)
    p = meter.update(batch("in_progress", 1000, 280, 20), now=10.0)
    assert p.done == 300
    assert p.rate == pytest.approx(20.0)  # 200 lines in 10 s
    assert p.eta == pytest.approx(35.0)  # 700 left at 20/s
    assert p.fraction == pytest.approx(0.3)


def test_progress_rate_follows_a_sliding_window() -> None:
    meter = ProgressMeter(window=30)
    meter.update(batch("in_progress", 10_000, 0), now=0)
    meter.update(batch("in_progress", 10_000, 10), now=30)  # slow start: 1 line/s
    meter.update(batch("in_progress", 10_000, 1010), now=40)
    p = meter.update(batch("in_progress", 10_000, 3010), now=60)  # 100 lines/s lately
    assert p.rate == pytest.approx((3010 - 10) / 30)  # the sample at t=30 starts the window
    assert p.eta == pytest.approx(6990 / 100)


def test_progress_restarts_when_the_status_changes() -> None:
    meter = ProgressMeter()
    meter.update(batch("validating"), now=0)
    p = meter.update(batch("in_progress", 100, 0), now=50)
    assert (p.rate, p.eta, p.fraction) == (None, None, 0.0)  # validating time is not throughput
    p = meter.update(batch("in_progress", 100, 40), now=52)
    assert (p.rate, p.eta) == (20.0, 3.0)
    done = meter.update(batch("completed", 100, 99, 1), now=60)
    assert (done.status, done.done, done.rate, done.eta, done.fraction) == ("completed", 100, None, None, 1.0)


def test_progress_with_nothing_moving_and_odd_counts() -> None:
    meter = ProgressMeter()
    meter.update(batch("in_progress", 100, 5), now=0)
    p = meter.update(batch("in_progress", 100, 5), now=5)
    assert (p.rate, p.eta) == (0.0, None)
    odd = meter.update({"status": "in_progress", "request_counts": {"total": None, "completed": -1}}, now=6)
    assert (odd.total, odd.completed, odd.failed, odd.fraction) == (0, 0, 0, None)


# --- the Files and Batch calls -------------------------------------------------------------------


def test_upload_is_multipart_with_purpose_and_the_bearer_key(tmp_path: Path) -> None:
    path = write(tmp_path / "in.jsonl", line("a"), line("b"))
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        request.read()
        seen.append(request)
        return httpx.Response(200, json={"id": "file-1", "object": "file", "bytes": 10, "purpose": "batch"})

    assert client(handler).upload_file(path, filename="prompts.jsonl")["id"] == "file-1"
    (request,) = seen
    assert request.url == "https://hearth.example.org/v1/files"
    assert request.headers["authorization"] == "Bearer sk-1"
    assert request.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert int(request.headers["content-length"]) == len(request.content)
    assert b'name="purpose"\r\n\r\nbatch\r\n' in request.content
    assert b'name="file"; filename="prompts.jsonl"' in request.content
    assert path.read_bytes() in request.content


def test_upload_refuses_big_and_empty_files_before_sending(tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("nothing should be sent")

    big = tmp_path / "big.jsonl"
    big.write_bytes(b"x" * 2048)
    with pytest.raises(BatchInputError, match=r"is 0\.0 MiB; the most a batch input may be is 0\.0 MiB"):
        client(handler).upload_file(big, max_bytes=1024)
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    with pytest.raises(BatchInputError, match="is empty"):
        client(handler).upload_file(empty)


def test_create_get_cancel_requests() -> None:
    seen: list[tuple[str, str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(
            (request.method, str(request.url), json.loads(request.content) if request.content else None)
        )
        return httpx.Response(200, json=batch("validating"))

    api = client(handler)
    api.create_batch("file-1", "/v1/embeddings", metadata={"project": "x"})
    api.create_batch("file-1", "/v1/chat/completions")
    api.get_batch("batch_1")
    api.cancel_batch("b/../x")
    assert seen == [
        (
            "POST",
            "https://hearth.example.org/v1/batches",
            {
                "input_file_id": "file-1",
                "endpoint": "/v1/embeddings",
                "completion_window": "24h",
                "metadata": {"project": "x"},
            },
        ),
        (
            "POST",
            "https://hearth.example.org/v1/batches",
            {"input_file_id": "file-1", "endpoint": "/v1/chat/completions", "completion_window": "24h"},
        ),
        ("GET", "https://hearth.example.org/v1/batches/batch_1", None),
        ("POST", "https://hearth.example.org/v1/batches/b%2F..%2Fx/cancel", None),
    ]


def paged(ids: list[str], seen: list[dict[str, str]]) -> Handler:
    """GET /v1/batches as OpenAI pages it: `after` an id, `limit`, `has_more`, `first_id` / `last_id`."""

    def handler(request: httpx.Request) -> httpx.Response:
        params = dict(request.url.params)
        seen.append(params)
        start = ids.index(params["after"]) + 1 if "after" in params else 0
        page = ids[start : start + int(params.get("limit", 20))]
        return httpx.Response(
            200,
            json={
                "object": "list",
                "data": [{"id": i, "object": "batch"} for i in page],
                "first_id": page[0] if page else None,
                "last_id": page[-1] if page else None,
                "has_more": start + len(page) < len(ids),
            },
        )

    return handler


def test_list_batches_follows_every_page() -> None:
    ids = [f"batch_{i}" for i in range(7)]
    seen: list[dict[str, str]] = []
    assert [b["id"] for b in client(paged(ids, seen)).list_batches(page_size=3)] == ids
    assert seen == [{"limit": "3"}, {"limit": "3", "after": "batch_2"}, {"limit": "3", "after": "batch_5"}]


def test_list_batches_stops_at_the_limit() -> None:
    ids = [f"batch_{i}" for i in range(250)]
    seen: list[dict[str, str]] = []
    got = list(client(paged(ids, seen)).list_batches(limit=120))
    assert [b["id"] for b in got] == ids[:120]
    assert seen == [{"limit": "100"}, {"limit": "20", "after": "batch_99"}]


def test_list_batches_empty_and_malformed() -> None:
    assert list(client(paged([], [])).list_batches()) == []
    with pytest.raises(GatewayError, match="unexpected body"):
        list(client(lambda r: httpx.Response(200, json={"object": "list"})).list_batches())


def test_download_streams_into_the_file(tmp_path: Path) -> None:
    content = b"".join(b'{"custom_id": "line-%d"}\n' % i for i in range(5000))

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/files/file-out/content"
        return httpx.Response(200, content=iter([content[:1000], content[1000:]]))

    dest = tmp_path / "out.jsonl"
    assert client(handler).download_file("file-out", dest) == len(content)
    assert dest.read_bytes() == content
    assert list(tmp_path.iterdir()) == [dest]


def test_download_errors_leave_no_file(tmp_path: Path) -> None:
    def missing(request: httpx.Request) -> httpx.Response:
        body = {
            "error": {"message": "No such File object: file-x", "type": "invalid_request_error", "code": None}
        }
        return httpx.Response(404, json=body)

    def broken(request: httpx.Request) -> httpx.Response:
        def chunks() -> Iterator[bytes]:
            yield b"partial"
            raise httpx.ReadError("connection reset")

        return httpx.Response(200, content=chunks())

    dest = tmp_path / "out.jsonl"
    with pytest.raises(GatewayError, match="No such File object") as caught:
        client(missing).download_file("file-x", dest)
    assert caught.value.status == 404
    with pytest.raises(GatewayError, match="cannot reach"):
        client(broken).download_file("file-x", dest)
    assert list(tmp_path.iterdir()) == []


# --- wait ----------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def scripted(answers: list[dict[str, Any] | httpx.Response]) -> Handler:
    script = iter(answers)

    def handler(request: httpx.Request) -> httpx.Response:
        answer = next(script)
        return answer if isinstance(answer, httpx.Response) else httpx.Response(200, json=answer)

    return handler


def test_wait_polls_with_backoff_until_the_end() -> None:
    clock = Clock()
    answers: list[dict[str, Any] | httpx.Response] = [
        batch("validating"),
        batch("validating"),
        batch("in_progress", 10, 0),
        batch("in_progress", 10, 4),
        batch("in_progress", 10, 4),
        batch("in_progress", 10, 4),
        batch("in_progress", 10, 9, 1),
        batch("finalizing", 10, 9, 1),
        batch("completed", 10, 9, 1, output_file_id="file-out"),
    ]
    heard: list[Progress] = []
    final = client(scripted(answers)).wait(
        "batch_1", heard.append, interval=1, max_interval=2, sleep=clock.sleep, clock=lambda: clock.now
    )
    assert final["output_file_id"] == "file-out"
    assert [p.status for p in heard] == [a["status"] for a in answers if isinstance(a, dict)]
    # unchanged: x1.5 (capped at 2); a new status: back to 1; moving counts: unchanged pause
    assert clock.sleeps == [1, 1.5, 1, 1, 1.5, 2, 2, 1]


def test_wait_rides_out_a_brief_outage_but_not_a_refusal() -> None:
    clock = Clock()
    outage: list[dict[str, Any] | httpx.Response] = [
        batch("in_progress", 2, 1),
        httpx.Response(502, text="bad gateway"),
        httpx.Response(503, json={"error": {"message": "restarting"}}),
        batch("completed", 2, 2),
    ]
    final = client(scripted(outage)).wait(
        "batch_1", lambda p: None, sleep=clock.sleep, clock=lambda: clock.now
    )
    assert final["status"] == "completed"
    assert clock.sleeps == [1.0, 2.0, 4.0]
    refusal: list[dict[str, Any] | httpx.Response] = [
        batch("in_progress", 2, 1),
        httpx.Response(404, json={"error": {"message": "No such batch: batch_1"}}),
    ]
    with pytest.raises(GatewayError, match="No such batch"):
        client(scripted(refusal)).wait("batch_1", lambda p: None, sleep=clock.sleep)


def test_wait_gives_up_after_a_long_outage() -> None:
    clock = Clock()
    down: list[dict[str, Any] | httpx.Response] = [httpx.Response(502, text="down")] * 10
    with pytest.raises(GatewayError) as caught:
        client(scripted(down)).wait("batch_1", lambda p: None, sleep=clock.sleep)
    assert caught.value.status == 502
    assert len(clock.sleeps) == 5
