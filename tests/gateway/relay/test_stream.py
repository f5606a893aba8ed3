"""ClientStream over a real upstream SSE stream: usage handling, [DONE], renames, closing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from typing import cast

import orjson
import pytest

from gateway.relay.base import EventStream, UpstreamCall
from gateway.relay.direct import DirectRelay
from gateway.relay.stream import DONE, ClientStream, StreamOutcome, data_of, usage_of_chunk
from tests.gateway.recording import RecordingUpstream


def chunk(content: str, model: str = "eng") -> bytes:
    """A vLLM-style content chunk: `"usage":null` because the gateway always asks for usage."""
    return (
        b'data: {"id":"c1","object":"chat.completion.chunk","model":"' + model.encode() + b'",'
        b'"choices":[{"index":0,"delta":{"content":' + orjson.dumps(content) + b"},"
        b'"finish_reason":null}],"usage":null}\n\n'
    )


def without_null_usage(event: bytes) -> bytes:
    return event.replace(b',"usage":null', b"")


USAGE = (
    b'data: {"id":"c1","object":"chat.completion.chunk","model":"eng","choices":[],'
    b'"usage":{"prompt_tokens":7,"completion_tokens":2,"total_tokens":9}}\n\n'
)
ROLE = (
    b'data: {"id":"c1","object":"chat.completion.chunk","model":"eng",'
    b'"choices":[{"index":0,"delta":{"role":"assistant","content":""}}],"usage":null}\n\n'
)


class Opened:
    """A ClientStream on a real upstream stream, and what its on_close received."""

    def __init__(self, stream: ClientStream, outcomes: list[StreamOutcome]) -> None:
        self.stream = stream
        self.outcomes = outcomes

    async def collect(self) -> list[bytes]:
        return [event async for event in self.stream]


async def open_client_stream(
    relay: DirectRelay,
    up: RecordingUpstream,
    *parts: bytes,
    wants_usage: bool = False,
    renames: tuple[tuple[bytes, bytes], ...] = (),
    delay_s: float = 0.0,
) -> Opened:
    up.reply = up.sse_reply(*parts, delay_s=delay_s)
    raw = await relay.open_stream(up.upstream(), UpstreamCall("chat/completions", b"{}", "r-1"))
    assert isinstance(raw, EventStream)
    events = aiter(raw)
    first = await anext(events)
    outcomes: list[StreamOutcome] = []
    stream = ClientStream(
        raw,
        events,
        first,
        started=time.perf_counter(),
        client_wants_usage=wants_usage,
        renames=renames,
        on_close=outcomes.append,
    )
    return Opened(stream, outcomes)


async def test_usage_chunk_dropped_when_client_did_not_ask(relay: DirectRelay, up: RecordingUpstream) -> None:
    s = await open_client_stream(relay, up, ROLE, chunk("Hel"), chunk("lo"), USAGE, DONE)
    assert await s.collect() == [
        without_null_usage(ROLE),
        without_null_usage(chunk("Hel")),
        without_null_usage(chunk("lo")),
        DONE,
    ]
    (outcome,) = s.outcomes
    assert (outcome.status, outcome.prompt_tokens, outcome.completion_tokens) == (200, 7, 2)
    assert outcome.usage_reported
    assert outcome.ttft_s is not None
    assert outcome.ttft_s >= 0


async def test_usage_chunk_kept_when_client_asked(relay: DirectRelay, up: RecordingUpstream) -> None:
    s = await open_client_stream(relay, up, ROLE, chunk("Hel"), chunk("lo"), USAGE, DONE, wants_usage=True)
    assert await s.collect() == [ROLE, chunk("Hel"), chunk("lo"), USAGE, DONE]
    (outcome,) = s.outcomes
    assert (outcome.status, outcome.prompt_tokens, outcome.completion_tokens) == (200, 7, 2)


async def test_without_engine_usage_text_chunks_are_counted(
    relay: DirectRelay, up: RecordingUpstream
) -> None:
    """llama.cpp's server sends no usage in streams: one token per chunk that carries text."""
    s = await open_client_stream(relay, up, ROLE, chunk("a"), chunk("b"), chunk("c"), DONE)
    events = await s.collect()
    assert events[-1] == DONE
    assert len(events) == 5
    (outcome,) = s.outcomes
    assert not outcome.usage_reported
    assert (outcome.status, outcome.prompt_tokens, outcome.completion_tokens) == (200, 0, 3)


async def test_missing_done_becomes_error_event_then_done(relay: DirectRelay, up: RecordingUpstream) -> None:
    s = await open_client_stream(relay, up, chunk("Hel"), chunk("lo"))  # EOF without [DONE]
    events = await s.collect()
    assert events[:2] == [without_null_usage(chunk("Hel")), without_null_usage(chunk("lo"))]
    assert events[-1] == DONE
    error = orjson.loads(data_of(events[2]) or b"")["error"]
    assert error["code"] == "upstream_error"
    assert error["type"] == "server_error"
    assert "before [DONE]" in error["message"]
    assert len(events) == 4
    (outcome,) = s.outcomes
    assert outcome.status == 502


async def test_stall_mid_stream_becomes_error_event(relay: DirectRelay, up: RecordingUpstream) -> None:
    s = await open_client_stream(relay, up, chunk("a"), chunk("b"), DONE, delay_s=5)
    events = await s.collect()
    assert events[0] == without_null_usage(chunk("a"))
    assert b'"error"' in events[1]
    assert events[2] == DONE
    assert s.outcomes[0].status == 502


async def test_model_renames_apply_to_every_event(relay: DirectRelay, up: RecordingUpstream) -> None:
    renames = ((b'"model":"eng"', b'"model":"pub"'),)
    s = await open_client_stream(relay, up, chunk("a"), USAGE, DONE, wants_usage=True, renames=renames)
    events = await s.collect()
    assert events == [chunk("a", model="pub"), USAGE.replace(b'"model":"eng"', b'"model":"pub"'), DONE]
    assert all(b'"eng"' not in e for e in events)


async def test_comments_pass_through(relay: DirectRelay, up: RecordingUpstream) -> None:
    s = await open_client_stream(relay, up, b": keep-alive\n\n", chunk("a"), b": ping\n\n", DONE)
    assert await s.collect() == [b": keep-alive\n\n", without_null_usage(chunk("a")), b": ping\n\n", DONE]


async def test_aclose_before_iteration_reports_once(relay: DirectRelay, up: RecordingUpstream) -> None:
    s = await open_client_stream(relay, up, *[chunk("x")] * 100, DONE, delay_s=0.01)
    await s.stream.aclose()
    await s.stream.aclose()
    (outcome,) = s.outcomes
    assert outcome.status == 499  # the client left before the end
    deadline = time.monotonic() + 2
    while not up.disconnects and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert up.disconnects == 1  # the engine sees the request go away


async def test_aclose_mid_iteration_reports_once(relay: DirectRelay, up: RecordingUpstream) -> None:
    s = await open_client_stream(relay, up, *[chunk("x")] * 100, DONE, delay_s=0.01)
    events = cast(AsyncGenerator[bytes, None], s.stream.__aiter__())
    await anext(events)
    await anext(events)
    await s.stream.aclose()  # what SSEResponse does when the client disconnects
    await events.aclose()  # the generator's own finally calls aclose() again
    (outcome,) = s.outcomes
    assert outcome.status == 499
    assert outcome.completion_tokens == 2  # counted from the chunks seen (no usage arrived)


async def test_aclose_after_the_end_reports_once(relay: DirectRelay, up: RecordingUpstream) -> None:
    s = await open_client_stream(relay, up, chunk("a"), USAGE, DONE)
    await s.collect()
    await s.stream.aclose()
    assert [o.status for o in s.outcomes] == [200]


@pytest.mark.parametrize(
    ("event", "data"),
    [
        (b'data: {"a":1}\n\n', b'{"a":1}'),
        (b'data:{"a":1}\n\n', b'{"a":1}'),
        (b"data: [DONE]\n\n", b"[DONE]"),
        (b"data:  two spaces\n\n", b" two spaces"),  # only one space is part of the field syntax
        (b"data: a\ndata: b\ndata:c\n\n", b"a\nb\nc"),
        (b"data: a\n: comment\ndata: b\n\n", b"a\nb"),
        (b": keep-alive\n\n", None),
        (b"event: ping\n\n", None),
    ],
)
def test_data_of(event: bytes, data: bytes | None) -> None:
    assert data_of(event) == data


@pytest.mark.parametrize(
    ("data", "usage"),
    [
        (
            b'{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}',
            {"prompt_tokens": 1, "completion_tokens": 2},
        ),
        (b'{"choices":[], "usage": {"prompt_tokens": 3}}', {"prompt_tokens": 3}),
        (b'{"choices":[{"delta":{}}],"usage":null}', None),
        (b'{"choices":[{"delta":{}}], "usage": null}', None),
        (b'{"choices":[{"delta":{"content":"a"}}]}', None),
        (b'{"usage":5}', None),
        (b'{"usage":{"prompt_tokens":1}', None),  # truncated JSON
        (b'["usage"]', None),
        (b'{"choices":[{"delta":{"content":"the word \\"usage\\" is here"}}]}', None),
    ],
)
def test_usage_of_chunk(data: bytes, usage: dict[str, int] | None) -> None:
    assert usage_of_chunk(data) == usage
