"""The real llama.cpp engine (llama-cpp-python's server) on a tiny random-weight model.

These tests check that the engine the endpoint launches works here, and pin down the facts
the gateway relies on about its OpenAI-compatible API, notably:

- streams end with a chunk whose `finish_reason` is set, then `data: [DONE]`;
- streams never carry usage, even when asked with `stream_options.include_usage`, so the
  gateway has to count a stream's tokens itself;
- an unknown model name is served by the loaded model (200), not refused;
- a non-UUID X-Request-ID is refused with an empty 400; a UUID one is echoed.

If an upgrade of llama-cpp-python changes one of these, the test that pins it fails and says
which fact moved.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.support.llamacpp import llamacpp_available, start_llamacpp_server
from tests.support.procs import ServerProcess, free_port

pytestmark = [
    pytest.mark.llamacpp,
    pytest.mark.skipif(not llamacpp_available(), reason="llama-cpp-python[server] is not installed"),
]

ALIAS = "tiny-llama"
TIMEOUT = httpx.Timeout(120.0, connect=10.0)
CHAT = {"messages": [{"role": "user", "content": "hello world"}], "temperature": 0}
PROMPT = {"prompt": "hello world", "temperature": 0}


@dataclass
class Engine:
    server: ServerProcess
    client: httpx.Client
    ready_seconds: float

    def log(self) -> str:
        return self.server.log()


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    pytest.importorskip("gguf")
    from tests.support.tiny_gguf import write_tiny_llama

    tmp = tmp_path_factory.mktemp("llamacpp")
    model = write_tiny_llama(tmp / "tiny.gguf")
    port = free_port()
    started = time.monotonic()
    server = start_llamacpp_server(model, ALIAS, port, tmp / "llamacpp.log")
    try:
        ready = time.monotonic() - started
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=TIMEOUT) as client:
            yield Engine(server=server, client=client, ready_seconds=ready)
    finally:
        server.stop()


def _ok(engine: Engine, response: httpx.Response) -> Any:
    assert response.status_code == 200, (
        f"{response.status_code} {response.text}\n--- engine log ---\n{engine.log()}"
    )
    return response.json()


def _stream(engine: Engine, path: str, body: dict[str, Any]) -> list[str]:
    """POST a streaming request; return the payloads of its `data:` lines, in order."""
    payloads: list[str] = []
    with engine.client.stream("POST", path, json={**body, "stream": True}) as response:
        assert response.status_code == 200, (
            f"{response.status_code} {response.read()!r}\n--- engine log ---\n{engine.log()}"
        )
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data:"):
                payloads.append(line.removeprefix("data:").strip())
            # Anything else is a blank separator or an SSE comment (": ping ...").
    return payloads


def _chunks(payloads: list[str]) -> list[dict[str, Any]]:
    assert payloads, "no data lines"
    assert payloads[-1] == "[DONE]", payloads[-3:]
    assert payloads.count("[DONE]") == 1
    return [json.loads(p) for p in payloads[:-1]]


def test_starts_quickly_and_lists_the_alias(engine: Engine) -> None:
    assert engine.ready_seconds < 60
    body = _ok(engine, engine.client.get("/v1/models"))
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == [ALIAS]


def test_chat_completion_returns_a_choice_and_usage(engine: Engine) -> None:
    body = _ok(
        engine,
        engine.client.post("/v1/chat/completions", json={"model": ALIAS, **CHAT, "max_tokens": 8}),
    )
    assert body["object"] == "chat.completion"
    assert body["model"] == ALIAS
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert choice["message"]["content"]
    # The tiny model's output head never picks an end-of-generation token.
    assert choice["finish_reason"] == "length"
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0
    assert usage["completion_tokens"] == 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_completion_returns_text_and_usage(engine: Engine) -> None:
    body = _ok(engine, engine.client.post("/v1/completions", json={"model": ALIAS, **PROMPT}))
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"]
    # "hello world" is <s> ▁hello ▁world in the tiny vocabulary.
    assert body["usage"]["prompt_tokens"] == 3
    assert body["usage"]["completion_tokens"] == 16  # llama-cpp-python's default max_tokens


def test_chat_stream_yields_chunks_then_done(engine: Engine) -> None:
    chunks = _chunks(_stream(engine, "/v1/chat/completions", {"model": ALIAS, **CHAT, "max_tokens": 6}))
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert all(c["model"] == ALIAS for c in chunks)
    # First a role-only delta, then one content delta per token, then an empty delta that
    # carries the finish reason.
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    content = [c for c in chunks if c["choices"][0]["delta"].get("content")]
    assert len(content) == 6
    last = chunks[-1]["choices"][0]
    assert last["delta"] == {}
    assert last["finish_reason"] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


def test_completion_stream_yields_chunks_then_done(engine: Engine) -> None:
    chunks = _chunks(_stream(engine, "/v1/completions", {"model": ALIAS, **PROMPT, "max_tokens": 6}))
    assert all(c["object"] == "text_completion" for c in chunks)
    texts = [c["choices"][0]["text"] for c in chunks]
    assert sum(1 for t in texts if t) == 6
    last = chunks[-1]["choices"][0]
    assert last["text"] == ""
    assert last["finish_reason"] == "length"


@pytest.mark.parametrize(
    ("path", "body"),
    [("/v1/chat/completions", CHAT), ("/v1/completions", PROMPT)],
    ids=["chat", "completion"],
)
def test_streams_carry_no_usage_even_when_asked(engine: Engine, path: str, body: dict[str, Any]) -> None:
    """llama-cpp-python ignores stream_options: no chunk has usage, no usage-only chunk.

    The gateway must therefore count a stream's tokens itself (for this engine, one content
    chunk per generated token; the prompt via /extras/tokenize/count or a tokenizer).
    """
    request = {"model": ALIAS, **body, "max_tokens": 5}
    chunks = _chunks(_stream(engine, path, {**request, "stream_options": {"include_usage": True}}))
    assert all("usage" not in c for c in chunks)
    assert all(c["choices"] for c in chunks)  # no final `choices: []` usage chunk either
    # The same request without streaming reports usage, and its completion tokens equal the
    # stream's content chunks (greedy decoding makes both runs generate the same tokens).
    usage = _ok(engine, engine.client.post(path, json=request))["usage"]
    assert usage["completion_tokens"] == 5
    if path == "/v1/chat/completions":
        deltas = [c["choices"][0]["delta"].get("content") for c in chunks]
    else:
        deltas = [c["choices"][0]["text"] for c in chunks]
    assert sum(1 for d in deltas if d) == usage["completion_tokens"]


def test_tokenize_count_matches_completion_prompt_tokens(engine: Engine) -> None:
    counted = _ok(engine, engine.client.post("/extras/tokenize/count", json={"input": "hello world"}))
    body = _ok(
        engine,
        engine.client.post("/v1/completions", json={"model": ALIAS, **PROMPT, "max_tokens": 1}),
    )
    assert counted["count"] == body["usage"]["prompt_tokens"]


def test_request_id_header(engine: Engine) -> None:
    request = {"model": ALIAS, **CHAT, "max_tokens": 1}
    # A UUID (any version, with or without dashes) is echoed back as given.
    for rid in (str(uuid.uuid4()), uuid.uuid4().hex, str(uuid.uuid1())):
        response = engine.client.post("/v1/chat/completions", json=request, headers={"X-Request-ID": rid})
        _ok(engine, response)
        assert response.headers["x-request-id"] == rid
    # Without one the engine makes up a dashless uuid4.
    response = engine.client.post("/v1/chat/completions", json=request)
    _ok(engine, response)
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])
    # Anything that is not a UUID is refused before the route runs: 400 with an empty body.
    response = engine.client.post("/v1/chat/completions", json=request, headers={"X-Request-ID": "req-123"})
    assert response.status_code == 400
    assert response.content == b""
    assert "x-request-id" not in response.headers


def test_unknown_model_is_served_by_the_loaded_one(engine: Engine) -> None:
    body = _ok(
        engine,
        engine.client.post("/v1/chat/completions", json={"model": "no-such-model", **CHAT, "max_tokens": 2}),
    )
    assert body["model"] == "no-such-model"  # echoed, although the alias's model answered
    assert body["usage"]["completion_tokens"] == 2


def test_bad_json_is_a_plain_500(engine: Engine) -> None:
    """The error handler itself crashes on unparsable JSON: uvicorn answers a bare 500 and then
    drops the connection without `Connection: close`, so a client that reuses it gets a reset.
    Hence a client of its own here."""
    with httpx.Client(base_url=engine.client.base_url, timeout=TIMEOUT) as client:
        response = client.post(
            "/v1/chat/completions",
            content=b'{"model": "tiny-llama",',
            headers={"content-type": "application/json"},
        )
    assert response.status_code == 500
    assert response.headers["content-type"].startswith("text/plain")
    assert "connection" not in response.headers
    assert "x-request-id" not in response.headers
    assert response.text == "Internal Server Error"


def test_invalid_request_is_a_500_with_an_openai_error(engine: Engine) -> None:
    response = engine.client.post("/v1/chat/completions", json={"model": ALIAS, "messages": "not a list"})
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["type"] == "internal_server_error"
    assert "validation error" in error["message"]


def test_prompt_longer_than_the_context_is_a_400(engine: Engine) -> None:
    response = engine.client.post(
        "/v1/completions",
        json={"model": ALIAS, "prompt": "hello " * 3000, "max_tokens": 2},
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "context_length_exceeded"
    assert "maximum context length is 2048 tokens" in error["message"]
