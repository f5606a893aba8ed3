"""The unmodified OpenAI SDK against a real gateway in front of a real sim engine."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import select

from gateway.store.database import Database
from gateway.store.models import UsageEvent
from tests.support.gateway import Gateway

CHAT = [{"role": "user", "content": "three word prompt"}]


def test_models_list(gateway: Gateway) -> None:
    models = gateway.client().models.list()
    assert [m.id for m in models.data] == ["sim-model"]
    assert models.data[0].owned_by == "hearth"
    assert gateway.client().models.retrieve("sim-model").id == "sim-model"


def test_chat_completion(gateway: Gateway) -> None:
    reply = gateway.client().chat.completions.create(model="sim-model", messages=CHAT, max_tokens=7)
    assert reply.object == "chat.completion"
    assert reply.model == "sim-model"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (3, 7)


def test_chat_stream_without_usage(gateway: Gateway) -> None:
    chunks = list(
        gateway.client().chat.completions.create(model="sim-model", messages=CHAT, max_tokens=5, stream=True)
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    # Hearth asked the engine for usage; the client did not, so it must not see it.
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"


def test_chat_stream_with_usage(gateway: Gateway) -> None:
    chunks = list(
        gateway.client().chat.completions.create(
            model="sim-model",
            messages=CHAT,
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4


def test_completion(gateway: Gateway) -> None:
    reply = gateway.client().completions.create(model="sim-model", prompt="a b c d", max_tokens=3)
    assert reply.object == "text_completion"
    assert reply.choices[0].text
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == 4


def test_completion_stream(gateway: Gateway) -> None:
    chunks = list(
        gateway.client().completions.create(model="sim-model", prompt="hello", max_tokens=6, stream=True)
    )
    assert sum(1 for c in chunks if c.choices and c.choices[0].text) == 6


def test_embeddings(gateway: Gateway) -> None:
    # The SDK asks for base64 and decodes it; a list of inputs gives one vector each.
    reply = gateway.client().embeddings.create(model="sim-model", input=["one", "two words"])
    assert len(reply.data) == 2
    assert len(reply.data[0].embedding) > 8
    assert reply.usage.prompt_tokens == 3
    again = gateway.client().embeddings.create(model="sim-model", input="one", encoding_format="float")
    assert again.data[0].embedding == pytest.approx(reply.data[0].embedding, rel=1e-6)


async def test_concurrent_streams(gateway: Gateway) -> None:
    client = gateway.async_client()

    async def one(i: int) -> int:
        stream = await client.chat.completions.create(
            model="sim-model", messages=[{"role": "user", "content": f"n {i}"}], max_tokens=8, stream=True
        )
        return sum([1 async for c in stream if c.choices and c.choices[0].delta.content])

    counts = await asyncio.gather(*(one(i) for i in range(40)))
    assert counts == [8] * 40


async def test_usage_recorded_without_prompts(gateway: Gateway, store_url: str) -> None:
    client = gateway.client()
    marker = "zebra-unique-marker"
    client.chat.completions.create(
        model="sim-model", messages=[{"role": "user", "content": marker}], max_tokens=2,
        extra_headers={"X-Request-ID": "usage-check-1"},
    )  # fmt: skip
    list(
        client.chat.completions.create(
            model="sim-model", messages=[{"role": "user", "content": marker}], max_tokens=3, stream=True,
            extra_headers={"X-Request-ID": "usage-check-2"},
        )
    )  # fmt: skip
    db = Database(store_url)
    try:
        deadline = time.monotonic() + 10
        rows: list[UsageEvent] = []
        while time.monotonic() < deadline and len(rows) < 2:
            async with db.session() as s:
                result = await s.execute(
                    select(UsageEvent).where(UsageEvent.request_id.in_(["usage-check-1", "usage-check-2"]))
                )
                rows = list(result.scalars())
            await asyncio.sleep(0.1)
        by_id = {r.request_id: r for r in rows}
        assert set(by_id) == {"usage-check-1", "usage-check-2"}
        unary, stream = by_id["usage-check-1"], by_id["usage-check-2"]
        assert (unary.user, unary.model, unary.cluster, unary.upstream) == (
            "tester",
            "sim-model",
            "local",
            "local/sim",
        )
        assert (unary.prompt_tokens, unary.completion_tokens, unary.status, unary.stream) == (
            1,
            2,
            200,
            False,
        )
        assert (stream.completion_tokens, stream.status, stream.stream) == (3, 200, True)
        assert stream.ttft_ms is not None
        assert stream.ttft_ms > 0
        assert unary.latency_ms > 0
        for row in rows:  # prompts are not stored anywhere in the record
            assert marker not in repr({c.name: getattr(row, c.name) for c in UsageEvent.__table__.columns})
    finally:
        await db.close()


def test_request_id_round_trip(gateway: Gateway) -> None:
    raw = gateway.client().chat.completions.with_raw_response.create(
        model="sim-model", messages=CHAT, max_tokens=1, extra_headers={"X-Request-ID": "my-id-42"}
    )
    assert raw.headers["x-request-id"] == "my-id-42"
    raw = gateway.client().models.with_raw_response.list()
    assert len(raw.headers["x-request-id"]) == 32  # generated when absent
