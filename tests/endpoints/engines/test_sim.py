"""The simulated engine, over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from endpoints.engines.sim import SimConfig, serve_sim
from endpoints.engines.sim_metrics import SlotGate
from tests.support.procs import ServerProcess, free_port, python_argv

FAST = {"ttft_ms": 0.0, "itl_ms": 0.0}


@contextlib.asynccontextmanager
async def sim(**overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A simulator served by `serve_sim` on a free port, and a client pointed at it."""
    port = free_port()
    task = asyncio.create_task(serve_sim(SimConfig(**overrides), "127.0.0.1", port))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5.0) as client:
        try:
            for _ in range(200):
                with contextlib.suppress(httpx.ConnectError):
                    if (await client.get("/health")).status_code == 200:
                        break
                await asyncio.sleep(0.01)
            yield client
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def metrics(client: httpx.AsyncClient) -> dict[str, float]:
    """Sample name (labels dropped; summed over them) → value, parsed by prometheus_client."""
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return values


def sse(body: str) -> list[Any]:
    """The `data:` payloads of an event stream; `[DONE]` stays a string."""
    assert body.endswith("\n\n")
    events = body.removesuffix("\n\n").split("\n\n")
    assert all(e.startswith("data: ") for e in events)
    return [e[6:] if e == "data: [DONE]" else orjson.loads(e[6:]) for e in events]


def chat(content: Any = "hello there world", **extra: Any) -> dict[str, Any]:
    return {"model": "sim-model", "messages": [{"role": "user", "content": content}], **extra}


async def test_health_and_models() -> None:
    async with sim(model="m-1", max_model_len=2048) as client:
        assert (await client.get("/health")).status_code == 200
        body = (await client.get("/v1/models")).json()
    assert body["object"] == "list"
    [card] = body["data"]
    assert card["id"] == card["root"] == "m-1"
    assert card["object"] == "model"
    assert card["owned_by"] == "hearth-sim"
    assert card["max_model_len"] == 2048
    assert abs(card["created"] - time.time()) < 60


async def test_chat_non_stream() -> None:
    async with sim(**FAST) as client:
        response = await client.post(
            "/v1/chat/completions",
            json=chat(
                [{"type": "text", "text": "one two"}, {"type": "text", "text": "three"}],
                max_tokens=5,
                temperature=0.3,
                top_p=0.9,
                seed=1,
                stop=["x"],
            ),
            headers={"X-Request-ID": "req-123"},
        )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "req-123"
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == "sim-model"
    [choice] = body["choices"]
    assert choice["index"] == 0
    assert choice["finish_reason"] == "length"
    assert choice["message"]["role"] == "assistant"
    content = choice["message"]["content"]
    assert "simulated" in content
    assert len(content.split()) == 5
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}


async def test_token_counts() -> None:
    async with sim(default_max_tokens=7, **FAST) as client:
        default = (await client.post("/v1/chat/completions", json=chat())).json()
        newer = (await client.post("/v1/chat/completions", json=chat(max_completion_tokens=3))).json()
        empty = (await client.post("/v1/chat/completions", json=chat(""))).json()
        ids = (await client.post("/v1/completions", json={"prompt": [1, 2, 3, 4]})).json()
    assert default["usage"] == {"prompt_tokens": 3, "completion_tokens": 7, "total_tokens": 10}
    assert newer["usage"]["completion_tokens"] == 3
    assert empty["usage"]["prompt_tokens"] == 1
    assert ids["usage"]["prompt_tokens"] == 4
    assert response_ids_distinct(default, newer)


def response_ids_distinct(*bodies: dict[str, Any]) -> bool:
    return len({b["id"] for b in bodies}) == len(bodies)


async def test_completion_non_stream_batch_and_n() -> None:
    async with sim(**FAST) as client:
        body = (
            await client.post(
                "/v1/completions",
                json={"model": "sim-model", "prompt": ["a b", "c d e"], "max_tokens": 4, "n": 2},
            )
        ).json()
    assert body["object"] == "text_completion"
    assert body["id"].startswith("cmpl-")
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert all(c["finish_reason"] == "length" and c["logprobs"] is None for c in body["choices"])
    assert all(len(c["text"].split()) == 4 for c in body["choices"])
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 16, "total_tokens": 21}


async def test_chat_stream_without_usage() -> None:
    async with sim(**FAST) as client:
        response = await client.post("/v1/chat/completions", json=chat(max_tokens=3, stream=True))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    *chunks, done = sse(response.text)
    assert done == "[DONE]"
    assert len(chunks) == 4  # role, then one per token
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["id"].startswith("chatcmpl-")
    assert all("usage" not in c for c in chunks)
    assert chunks[0]["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
    ]
    tokens = [c["choices"][0]["delta"]["content"] for c in chunks[1:]]
    assert len("".join(tokens).split()) == 3
    assert [c["choices"][0]["finish_reason"] for c in chunks[1:]] == [None, None, "length"]


async def test_chat_stream_with_usage_and_n() -> None:
    async with sim(**FAST) as client:
        response = await client.post(
            "/v1/chat/completions",
            json=chat("a b c d", max_tokens=2, n=2, stream=True, stream_options={"include_usage": True}),
        )
    *chunks, usage, done = sse(response.text)
    assert done == "[DONE]"
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 4, "completion_tokens": 4, "total_tokens": 8}
    assert all(c["usage"] is None for c in chunks)
    assert len(chunks) == 6  # (role + 2 tokens) x 2 choices
    assert sorted(c["choices"][0]["index"] for c in chunks) == [0, 0, 0, 1, 1, 1]
    finished = [c["choices"][0]["index"] for c in chunks if c["choices"][0]["finish_reason"]]
    assert finished == [0, 1]


async def test_completion_stream() -> None:
    async with sim(**FAST) as client:
        plain = await client.post("/v1/completions", json={"prompt": "x y", "max_tokens": 3, "stream": True})
        counted = await client.post(
            "/v1/completions",
            json={
                "prompt": "x y",
                "max_tokens": 3,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        )
    *chunks, done = sse(plain.text)
    assert done == "[DONE]"
    assert len(chunks) == 3
    assert all(c["object"] == "text_completion" and "usage" not in c for c in chunks)
    assert [set(c["choices"][0]) >= {"index", "text", "logprobs", "finish_reason"} for c in chunks] == [
        True
    ] * 3
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, "length"]
    *chunks, usage, done = sse(counted.text)
    assert all(c["usage"] is None for c in chunks)
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}


async def test_stream_timing() -> None:
    async with sim(ttft_ms=100, itl_ms=20) as client:
        start = time.monotonic()
        first: float | None = None
        async with client.stream(
            "POST", "/v1/completions", json={"prompt": "p", "max_tokens": 6, "stream": True}
        ) as response:
            async for _ in response.aiter_lines():
                first = first or time.monotonic() - start
        total = time.monotonic() - start
        start = time.monotonic()
        await client.post("/v1/completions", json={"prompt": "p", "max_tokens": 6})
        non_stream = time.monotonic() - start
    assert first is not None
    assert 0.09 <= first < 0.3
    assert 0.19 <= total < 0.6  # 100 + 5 x 20 ms
    assert 0.19 <= non_stream < 0.6


def unpack(vector: str, dim: int) -> list[float]:
    return list(struct.unpack(f"<{dim}f", base64.b64decode(vector)))


async def test_embeddings_float_and_base64() -> None:
    async with sim(embedding_dim=32, **FAST) as client:
        floats = (await client.post("/v1/embeddings", json={"input": ["alpha beta", "gamma"]})).json()
        again = (await client.post("/v1/embeddings", json={"input": "alpha beta"})).json()
        b64 = (
            await client.post(
                "/v1/embeddings",
                json={"model": "sim-model", "input": "alpha beta", "encoding_format": "base64"},
            )
        ).json()
        ids = (await client.post("/v1/embeddings", json={"input": [[1, 2], [3]]})).json()
    assert floats["object"] == "list"
    assert floats["model"] == "sim-model"
    assert [d["index"] for d in floats["data"]] == [0, 1]
    assert all(d["object"] == "embedding" for d in floats["data"])
    first, second = (d["embedding"] for d in floats["data"])
    assert len(first) == 32
    assert math.isclose(math.fsum(v * v for v in first), 1.0, rel_tol=1e-5)
    assert math.isclose(math.fsum(v * v for v in second), 1.0, rel_tol=1e-5)
    assert first != second
    assert again["data"][0]["embedding"] == first
    assert unpack(b64["data"][0]["embedding"], 32) == first
    assert floats["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    assert ids["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    assert len(ids["data"]) == 2


async def test_openai_sdk_talks_to_it() -> None:
    openai = pytest.importorskip("openai")
    async with sim(**FAST) as client:
        base_url = str(client.base_url).rstrip("/") + "/v1"
        sdk = openai.AsyncOpenAI(base_url=base_url, api_key="unused")
        try:
            [model] = (await sdk.models.list()).data
            completion = await sdk.chat.completions.create(
                model=model.id, messages=[{"role": "user", "content": "hi"}], max_tokens=4
            )
            stream = await sdk.chat.completions.create(
                model=model.id,
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=4,
                stream=True,
                stream_options={"include_usage": True},
            )
            parts = [c async for c in stream]
            embedding = await sdk.embeddings.create(model=model.id, input="hi")  # base64
        finally:
            await sdk.close()
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 4
    text = "".join(c.choices[0].delta.content or "" for c in parts if c.choices)
    assert text == completion.choices[0].message.content
    assert parts[-1].usage is not None
    assert parts[-1].usage.total_tokens == 5
    vector = embedding.data[0].embedding
    assert len(vector) == 64
    assert math.isclose(math.fsum(v * v for v in vector), 1.0, rel_tol=1e-5)


async def test_queueing_is_fifo_and_visible_in_metrics() -> None:
    async with sim(max_concurrency=2, ttft_ms=200, itl_ms=0) as client:
        start = time.monotonic()
        body = {"prompt": "p", "max_tokens": 1}
        requests = [asyncio.create_task(client.post("/v1/completions", json=body)) for _ in range(4)]
        await asyncio.sleep(0.1)
        during = await metrics(client)
        responses = await asyncio.gather(*requests)
        elapsed = time.monotonic() - start
        after = await metrics(client)
    assert during["vllm:num_requests_running"] == 2
    assert during["vllm:num_requests_waiting"] == 2
    assert during["vllm:gpu_cache_usage_perc"] == 1.0
    assert all(r.status_code == 200 for r in responses)
    assert 0.39 <= elapsed < 1.0  # two waves of 200 ms
    assert after["vllm:num_requests_running"] == after["vllm:num_requests_waiting"] == 0
    assert after["vllm:request_success_total"] == 4
    assert after["vllm:prompt_tokens_total"] == 4
    assert after["vllm:generation_tokens_total"] == 4
    assert after["hearth_sim_requests_total"] == 4
    assert after["hearth_sim_requests_cancelled_total"] == 0


async def wait_for(client: httpx.AsyncClient, name: str, value: float) -> dict[str, float]:
    for _ in range(100):
        current = await metrics(client)
        if current[name] == value:
            return current
        await asyncio.sleep(0.02)
    raise AssertionError(f"{name} never reached {value}: {current}")


async def test_disconnect_mid_stream_cancels_and_frees_the_slot() -> None:
    async with sim(max_concurrency=1, ttft_ms=0, itl_ms=20) as client:
        body = chat(max_tokens=1000, stream=True)
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            lines = response.aiter_lines()
            assert (await anext(lines)).startswith("data: ")
            assert (await metrics(client))["vllm:num_requests_running"] == 1
        # leaving the block closes the connection before the stream ended
        after = await wait_for(client, "hearth_sim_requests_cancelled_total", 1)
        assert after["vllm:num_requests_running"] == 0
        assert after["vllm:request_success_total"] == 0
        assert after["vllm:generation_tokens_total"] < 1000
        follow_up = await client.post("/v1/chat/completions", json=chat(max_tokens=1))
        assert follow_up.status_code == 200


async def test_disconnect_while_waiting_or_not_streaming() -> None:
    async with sim(max_concurrency=1, ttft_ms=2000, itl_ms=0) as client:
        requests = [
            asyncio.create_task(client.post("/v1/completions", json={"prompt": "p"}, timeout=0.2))
            for _ in range(2)
        ]
        for outcome in await asyncio.gather(*requests, return_exceptions=True):
            assert isinstance(outcome, httpx.TimeoutException)
        after = await wait_for(client, "hearth_sim_requests_cancelled_total", 2)
        assert after["vllm:num_requests_running"] == after["vllm:num_requests_waiting"] == 0


async def test_api_key() -> None:
    async with sim(api_key="s3cret", **FAST) as client:
        missing = await client.get("/v1/models")
        wrong = await client.post(
            "/v1/chat/completions", json=chat(), headers={"Authorization": "Bearer nope"}
        )
        right = await client.get("/v1/models", headers={"Authorization": "Bearer s3cret"})
        health = await client.get("/health")
        scrape = await client.get("/metrics")
    assert missing.status_code == wrong.status_code == 401
    assert set(missing.json()["error"]) == {"message", "type", "param", "code"}
    assert right.status_code == health.status_code == scrape.status_code == 200


async def test_fail_status() -> None:
    async with sim(fail_status=503, **FAST) as client:
        failed = await client.post("/v1/chat/completions", json=chat())
        models = await client.get("/v1/models")
        health = await client.get("/health")
    assert failed.status_code == models.status_code == 503
    error = failed.json()["error"]
    assert error["type"] == "ServiceUnavailableError"
    assert "imulated" in error["message"]
    assert health.status_code == 200


async def test_request_errors() -> None:
    async with sim(max_model_len=10, **FAST) as client:
        unknown = await client.post("/v1/chat/completions", json={**chat(), "model": "gpt-x"})
        bad_json = await client.post(
            "/v1/completions", content=b"{nope", headers={"Content-Type": "application/json"}
        )
        no_messages = await client.post("/v1/chat/completions", json={"model": "sim-model"})
        no_prompt = await client.post("/v1/completions", json={"model": "sim-model"})
        too_long = await client.post("/v1/completions", json={"prompt": "a b c", "max_tokens": 8})
        bad_n = await client.post("/v1/completions", json={"prompt": "a", "n": 0})
        options = await client.post(
            "/v1/completions", json={"prompt": "a", "stream_options": {"include_usage": True}}
        )
        no_route = await client.get("/v1/nothing")
    assert unknown.status_code == 404
    assert unknown.json()["error"] == {
        "message": "The model `gpt-x` does not exist.",
        "type": "NotFoundError",
        "param": "model",
        "code": "model_not_found",
    }
    for response in (bad_json, no_messages, no_prompt, too_long, bad_n, options):
        assert response.status_code == 400, response.text
        assert response.json()["error"]["type"] == "BadRequestError"
    assert no_messages.json()["error"]["param"] == "messages"
    assert no_prompt.json()["error"]["param"] == "prompt"
    assert "maximum context length is 10 tokens" in too_long.json()["error"]["message"]
    assert no_route.status_code == 404
    assert no_route.json()["error"]["type"] == "NotFoundError"


async def test_default_max_tokens_fits_the_context() -> None:
    async with sim(max_model_len=10, default_max_tokens=16, **FAST) as client:
        body = {"messages": [{"role": "user", "content": "a b c"}], "max_completion_tokens": None}
        fitted = (await client.post("/v1/chat/completions", json=body)).json()
    assert fitted["usage"] == {"prompt_tokens": 3, "completion_tokens": 7, "total_tokens": 10}


async def test_slot_gate_is_fifo_and_survives_cancelled_waiters() -> None:
    gate = SlotGate(1)
    await gate.acquire()
    order: list[int] = []

    async def wait(i: int) -> None:
        await gate.acquire()
        order.append(i)
        gate.release()

    waiters = [asyncio.create_task(wait(i)) for i in range(4)]
    await asyncio.sleep(0)
    assert (gate.running, gate.waiting) == (1, 4)
    waiters[1].cancel()
    await asyncio.sleep(0)
    assert gate.waiting == 3
    gate.release()
    await asyncio.gather(*waiters, return_exceptions=True)
    assert order == [0, 2, 3]
    assert (gate.running, gate.waiting) == (0, 0)


async def test_slot_gate_waiter_cancelled_as_the_slot_moves_on() -> None:
    gate = SlotGate(1)
    await gate.acquire()
    first = asyncio.create_task(gate.acquire())
    second = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    first.cancel()
    gate.release()  # before `first` has seen its cancellation: the slot goes to `second`
    await second
    with pytest.raises(asyncio.CancelledError):
        await first
    assert (gate.running, gate.waiting) == (1, 0)
    gate.release()
    assert gate.running == 0


def test_cli_subprocess(tmp_path: Path) -> None:
    port = free_port()
    argv = python_argv(
        "-m",
        "endpoints.engines.sim",
        "--port",
        str(port),
        "--model",
        "cli-model",
        "--ttft-ms",
        "0",
        "--itl-ms",
        "0",
        "--max-concurrency",
        "4",
        "--api-key",
        "k",
    )
    with ServerProcess(argv, f"http://127.0.0.1:{port}/health", tmp_path / "sim.log") as server:
        response = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": "Bearer k"})
        assert response.json()["data"][0]["id"] == "cli-model"
        assert server.proc is not None
        server.stop()
        assert server.proc.returncode == 0, server.log()
    assert "SIMULATED" in server.log()
