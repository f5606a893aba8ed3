"""Affinity keys of the OpenAI request shapes, and the dispatcher sending each conversation to
one worker through a real relay."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.auth.principal import Principal
from gateway.metrics import GatewayMetrics
from gateway.relay.direct import DirectRelay
from gateway.relay.dispatch import CallContext, Dispatcher
from gateway.routing.affinity import MAX_KEY_BYTES, affinity_key
from gateway.routing.catalogue import Catalogue, UpstreamSource
from gateway.routing.router import Router
from tests.gateway.recording import RecordingUpstream, json_reply

SYSTEM = {"role": "system", "content": "You are terse."}


def chat(*messages: Any) -> dict[str, Any]:
    return {"model": "m", "messages": list(messages)}


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def test_chat_key_is_the_system_and_first_user_message() -> None:
    key = affinity_key("chat/completions", chat(SYSTEM, user("What is HPC?")))
    assert key == b"You are terse.\x00What is HPC?"
    later_turn = chat(
        SYSTEM, user("What is HPC?"), {"role": "assistant", "content": "Big computers."}, user("And Slurm?")
    )
    assert affinity_key("chat/completions", later_turn) == key  # the conversation keeps its key
    assert affinity_key("chat/completions", chat(SYSTEM, user("What is MPI?"))) != key


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        ([user("hi")], b"\x00hi"),  # no system message
        ([SYSTEM], b"You are terse.\x00"),  # no user message yet
        ([{"role": "developer", "content": "Be brief."}, user("hi")], b"Be brief.\x00hi"),
        (  # parts: the text ones, joined; images left out
            [
                user(
                    [
                        {"type": "text", "text": "Look "},
                        {"type": "image_url", "image_url": {"url": "x"}},
                        {"type": "text", "text": "here"},
                    ]
                )
            ],
            b"\x00Look here",
        ),
        ([user([{"type": "image_url", "image_url": {"url": "x"}}])], None),  # no text at all
        ([user(None)], None),  # empty content
        ([user("hi"), SYSTEM], b"\x00hi"),  # a system message after the first user message: not the start
        ([user({"weird": True})], None),
        (["not a message", 3, user("hi")], b"\x00hi"),
        ([{"content": "no role"}, user("hi")], b"\x00hi"),
        ([], None),
    ],
)
def test_chat_key_of_odd_shapes(messages: list[Any], expected: bytes | None) -> None:
    assert affinity_key("chat/completions", chat(*messages)) == expected


@pytest.mark.parametrize(
    "payload", [{"model": "m"}, {"model": "m", "messages": "hi"}, {"model": "m", "messages": None}]
)
def test_chat_key_without_messages(payload: dict[str, Any]) -> None:
    assert affinity_key("chat/completions", payload) is None


def test_chat_key_is_bounded_and_leaves_room_for_the_user_message() -> None:
    long_system = {"role": "system", "content": "s" * 10_000}
    key = affinity_key("chat/completions", chat(long_system, user("q" * 10_000)))
    assert key is not None
    assert len(key) == MAX_KEY_BYTES
    assert key.count(b"s") == MAX_KEY_BYTES // 2
    assert b"q" in key
    other = affinity_key("chat/completions", chat(long_system, user("another question")))
    assert other != key  # ... still spreads conversations by their first question
    wide = affinity_key("chat/completions", chat(user("é" * 5000)))  # multi-byte text
    assert wide is not None
    assert len(wide) == MAX_KEY_BYTES


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("Once upon a time", b"Once upon a time"),
        (["Once upon a time", "Another"], b"Once upon a time"),
        ([1, 2, 3], b"1,2,3"),
        ([[7, 8], [9]], b"7,8"),
        ("", None),
        ([], None),
        (None, None),
        ({"text": "x"}, None),
    ],
)
def test_completion_key_is_the_start_of_the_prompt(prompt: Any, expected: bytes | None) -> None:
    assert affinity_key("completions", {"model": "m", "prompt": prompt}) == expected


def test_completion_key_is_bounded() -> None:
    assert affinity_key("completions", {"model": "m", "prompt": "p" * 100_000}) == b"p" * MAX_KEY_BYTES
    tokens = affinity_key("completions", {"model": "m", "prompt": list(range(100_000))})
    assert tokens is not None
    assert len(tokens) <= MAX_KEY_BYTES
    assert tokens.startswith(b"0,1,2,")


@pytest.mark.parametrize("path", ["embeddings", "models", "batches"])
def test_no_key_for_other_endpoints(path: str) -> None:
    assert affinity_key(path, {"model": "m", "input": "hi", "messages": [user("hi")], "prompt": "hi"}) is None


# --- through the dispatcher -----------------------------------------------------------------


@pytest.fixture
async def relay() -> AsyncIterator[DirectRelay]:
    r = DirectRelay(connect_timeout_s=1.0, request_timeout_s=5.0)
    yield r
    await r.close()


def call_context() -> CallContext:
    return CallContext(
        Principal(user="alice"), "0f8fad5b-d9cb-469f-a165-70867728950e", "chat.completions",
        "chat/completions", time.perf_counter(),
    )  # fmt: skip


async def test_each_conversation_keeps_to_one_worker(relay: DirectRelay) -> None:
    reply = json_reply({"id": "c1", "model": "m", "choices": [], "usage": {"prompt_tokens": 1}})
    async with RecordingUpstream() as w0, RecordingUpstream() as w1, RecordingUpstream() as w2:
        workers = {"w0": w0, "w1": w1, "w2": w2}
        for w in workers.values():
            w.reply = reply
        sources = [UpstreamSource(w.upstream(name, "c1"), ("m",)) for name, w in workers.items()]
        dispatcher = Dispatcher(Router(Catalogue(sources, relay)), relay, GatewayMetrics(), None)
        where: dict[int, set[str]] = {}
        for turn in range(3):
            for conversation in range(20):
                before = {name: len(w.seen) for name, w in workers.items()}
                messages = [SYSTEM, user(f"question {conversation}")]
                messages += [user(f"follow-up {t}") for t in range(turn)]
                answer = await dispatcher.unary(call_context(), chat(*messages))
                assert answer.status == 200
                (served,) = [name for name, w in workers.items() if len(w.seen) > before[name]]
                where.setdefault(conversation, set()).add(served)
    assert all(len(names) == 1 for names in where.values()), where  # every turn to the same worker
    spread = Counter(next(iter(names)) for names in where.values())
    assert len(spread) == 3, spread  # and the conversations over all of them
