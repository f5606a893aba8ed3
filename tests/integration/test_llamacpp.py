"""Real tokens: the OpenAI SDK through the gateway to llama.cpp's server on a tiny GGUF model."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway.store.database import Database
from gateway.store.models import UsageEvent
from tests.support.gateway import Gateway, start_gateway
from tests.support.llamacpp import LlamaCppServer, start_llamacpp_server
from tests.support.procs import free_port
from tests.support.tiny_gguf import write_tiny_llama

pytestmark = pytest.mark.llamacpp


@pytest.fixture(scope="module")
def llama(logs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaCppServer]:
    model = write_tiny_llama(tmp_path_factory.mktemp("gguf") / "tiny.gguf")
    server = start_llamacpp_server(model, "tiny-llama", free_port(), logs / "llamacpp.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gw(logs: Path, llama: LlamaCppServer, store_url: str) -> Iterator[Gateway]:
    url = llama.ready_url.rsplit("/", 1)[0]  # …/v1/models → …/v1
    g = start_gateway(
        logs, clusters={"cpu": {"upstreams": [{"name": "llama", "url": url}]}}, store_url=store_url
    )
    yield g
    g.stop()


def test_models_discovered_from_engine(gw: Gateway) -> None:
    assert [m.id for m in gw.client().models.list().data] == ["tiny-llama"]


def test_chat_completion(gw: Gateway) -> None:
    reply = gw.client().chat.completions.create(
        model="tiny-llama", messages=[{"role": "user", "content": "hello world"}], max_tokens=8
    )
    assert reply.choices[0].message.content
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 8
    assert reply.usage.prompt_tokens > 0


def test_chat_stream_and_usage_estimate(gw: Gateway, store_url: str) -> None:
    chunks = list(
        gw.client().chat.completions.create(
            model="tiny-llama",
            messages=[{"role": "user", "content": "hello world"}],
            max_tokens=6,
            stream=True,
            extra_headers={"X-Request-ID": "llama-stream-1"},  # not a UUID: sent as its UUIDv5
        )
    )  # fmt: skip
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) == 6
    assert chunks[-1].choices[0].finish_reason == "length"

    async def recorded() -> UsageEvent | None:
        db = Database(store_url)
        try:
            for _ in range(100):
                async with db.session() as s:
                    row = (
                        await s.execute(select(UsageEvent).where(UsageEvent.request_id == "llama-stream-1"))
                    ).scalar()
                if row is not None:
                    return row
                await asyncio.sleep(0.05)
            return None
        finally:
            await db.close()

    row = asyncio.run(recorded())
    assert row is not None
    # llama.cpp's server sends no usage in streams: Hearth counts the text chunks itself.
    assert (row.completion_tokens, row.status, row.cluster) == (6, 200, "cpu")


def test_completion_stream(gw: Gateway) -> None:
    chunks = list(
        gw.client().completions.create(model="tiny-llama", prompt="hello", max_tokens=5, stream=True)
    )
    assert sum(1 for c in chunks if c.choices and c.choices[0].text) == 5
