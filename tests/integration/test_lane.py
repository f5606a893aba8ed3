"""The request lane (gateway/serving) on the wire: a real `hearth serve`, raw sockets.

The inference POSTs are answered from the connection without ASGI; these tests hold it to
what uvicorn does for every other request: keep-alive, pipelining, HTTP/1.0, Expect:
100-continue, body limits (declared and chunked), X-Request-ID, and a client that leaves.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httptools
import orjson
import pytest

from tests.support.gateway import Gateway, Sim, sim_metric, start_gateway, start_sim, upstream

CHAT = orjson.dumps({"model": "sim-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})


@pytest.fixture(scope="module")
def gw(logs: Path, sim: Sim, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    db = tmp_path_factory.mktemp("lane") / "hearth.db"
    g = start_gateway(
        logs,
        clusters={"local": {"upstreams": [upstream(sim, "sim")]}},
        store_url=f"sqlite:///{db}",
        server={"max_body_bytes": 4096},
    )
    yield g
    g.stop()


class Answer:
    def __init__(self, status: int = 0) -> None:
        self.status = status
        self.headers: dict[bytes, bytes] = {}
        self.body = b""


class Answers:
    """httptools callbacks collecting each response on a connection."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.done: list[Answer] = []
        self.current = Answer()

    def on_message_begin(self) -> None:
        self.current = Answer()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.current.headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        self.current.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.current.body += body

    def on_message_complete(self) -> None:
        self.done.append(self.current)


def connect(gw: Gateway) -> socket.socket:
    host, port = gw.root.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def request(gw: Gateway, body: bytes = CHAT, *, path: str = "/v1/chat/completions", extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {gw.api_key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


def read_answers(sock: socket.socket, n: int) -> list[Answer]:
    answers = Answers()
    while len(answers.done) < n:
        data = sock.recv(65536)
        if not data:
            break
        answers.parser.feed_data(data)
    return answers.done


def test_answers_on_one_keep_alive_connection_carry_request_ids(gw: Gateway) -> None:
    with connect(gw) as sock:
        for i in range(3):
            sock.sendall(request(gw, extra=f"X-Request-ID: lane-{i}\r\n"))
            (answer,) = read_answers(sock, 1)
            assert answer.status == 200
            assert answer.headers[b"x-request-id"] == f"lane-{i}".encode()
            assert answer.headers[b"content-type"] == b"application/json"
            assert b"date" in answer.headers
            assert orjson.loads(answer.body)["object"] == "chat.completion"


def test_pipelined_requests_are_answered_in_order(gw: Gateway) -> None:
    with connect(gw) as sock:
        sock.sendall(b"".join(request(gw, extra=f"X-Request-ID: pipe-{i}\r\n") for i in range(4)))
        answers = read_answers(sock, 4)
    assert [a.headers[b"x-request-id"] for a in answers] == [f"pipe-{i}".encode() for i in range(4)]
    assert all(a.status == 200 for a in answers)


def test_http_1_0_gets_its_answer_and_the_connection_closes(gw: Gateway) -> None:
    with connect(gw) as sock:
        sock.sendall(request(gw).replace(b"HTTP/1.1", b"HTTP/1.0", 1))
        (answer,) = read_answers(sock, 1)
        assert answer.status == 200
        assert answer.headers[b"connection"] == b"close"
        assert sock.recv(10) == b""


def test_expect_100_continue_is_honoured(gw: Gateway) -> None:
    with connect(gw) as sock:
        head, _, body = request(gw, extra="Expect: 100-continue\r\n").partition(b"\r\n\r\n")
        sock.sendall(head + b"\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(body)
        (answer,) = read_answers(sock, 1)
        assert answer.status == 200


def test_declared_body_over_the_limit_is_413(gw: Gateway) -> None:
    big = orjson.dumps({"model": "sim-model", "messages": [{"role": "user", "content": "x" * 5000}]})
    with connect(gw) as sock:
        sock.sendall(request(gw, big))
        (answer,) = read_answers(sock, 1)
    assert answer.status == 413
    assert orjson.loads(answer.body)["error"]["type"] == "invalid_request_error"
    assert b"x-request-id" in answer.headers


def test_chunked_body_over_the_limit_is_413(gw: Gateway) -> None:
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {gw.api_key}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    chunk = b"x" * 3000
    with connect(gw) as sock:
        sock.sendall(head + b"%x\r\n%b\r\n" % (len(chunk), chunk) * 2 + b"0\r\n\r\n")
        (answer,) = read_answers(sock, 1)
    assert answer.status == 413


def test_chunked_body_under_the_limit_is_served(gw: Gateway) -> None:
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {gw.api_key}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    first, second = CHAT[:10], CHAT[10:]
    with connect(gw) as sock:
        sock.sendall(head + b"%x\r\n%b\r\n%x\r\n%b\r\n0\r\n\r\n" % (len(first), first, len(second), second))
        (answer,) = read_answers(sock, 1)
    assert answer.status == 200


def test_errors_keep_the_openai_body_and_the_connection(gw: Gateway) -> None:
    with connect(gw) as sock:
        sock.sendall(request(gw, b"{not json"))
        sock.sendall(request(gw).replace(gw.api_key.encode(), b"wrong-key"))
        sock.sendall(
            request(gw, orjson.dumps({"model": "nope", "messages": [{"role": "user", "content": "x"}]}))
        )
        bad, unauthorised, missing = read_answers(sock, 3)
    assert (bad.status, unauthorised.status, missing.status) == (400, 401, 404)
    assert orjson.loads(missing.body)["error"]["code"] == "model_not_found"


def test_stream_is_chunked_and_ends_with_done(gw: Gateway) -> None:
    body = orjson.dumps({**orjson.loads(CHAT), "stream": True})
    with connect(gw) as sock:
        sock.sendall(request(gw, body))
        (answer,) = read_answers(sock, 1)
    assert answer.status == 200
    assert answer.headers[b"transfer-encoding"] == b"chunked"
    assert answer.headers[b"content-type"].startswith(b"text/event-stream")
    assert answer.body.rstrip().endswith(b"data: [DONE]")


def test_client_leaving_mid_stream_cancels_the_engine_request(logs: Path, tmp_path: Path) -> None:
    slow = start_sim(logs, model="slow-lane", ttft_ms=0, itl_ms=200)
    g = start_gateway(
        logs, clusters={"s": {"upstreams": [upstream(slow, "slow")]}}, store_url=f"sqlite:///{tmp_path}/h.db"
    )
    try:
        body = orjson.dumps(
            {
                "model": "slow-lane",
                "messages": [{"role": "user", "content": "x"}],
                "max_tokens": 200,
                "stream": True,
            }
        )
        with connect(g) as sock:
            sock.sendall(request(g, body))
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK")
            deadline = time.monotonic() + 5
            while sim_metric(slow, "vllm:num_requests_running") < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert sim_metric(slow, "vllm:num_requests_running") == 1
        deadline = time.monotonic() + 5
        while sim_metric(slow, "vllm:num_requests_running") > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sim_metric(slow, "vllm:num_requests_running") == 0
    finally:
        g.stop()
        slow.proc.stop()
