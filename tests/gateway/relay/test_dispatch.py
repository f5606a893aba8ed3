"""The Dispatcher with real parts (catalogue, router, DirectRelay) in front of recording
upstreams: what the worker is sent, failover before the first byte, renames, bookkeeping."""

from __future__ import annotations

import copy
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest

from gateway.auth.principal import Principal
from gateway.errors import ModelNotFound, PermissionDenied, UpstreamError
from gateway.metrics import GatewayMetrics
from gateway.relay.base import UpstreamReply
from gateway.relay.direct import DirectRelay
from gateway.relay.dispatch import CallContext, Dispatcher
from gateway.relay.stream import DONE, ClientStream, data_of
from gateway.routing.catalogue import Catalogue, ModelRule, UpstreamSource
from gateway.routing.router import Router
from tests.gateway.recording import RecordingUpstream, json_reply

CONTENT = (
    b'data: {"id":"c1","object":"chat.completion.chunk","model":"m",'
    b'"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}],"usage":null}\n\n'
)
USAGE = (
    b'data: {"id":"c1","object":"chat.completion.chunk","model":"m","choices":[],'
    b'"usage":{"prompt_tokens":4,"completion_tokens":1,"total_tokens":5}}\n\n'
)
MESSAGES = [{"role": "user", "content": "hi"}]

MakeDispatcher = Callable[..., Dispatcher]


@pytest.fixture
async def second() -> AsyncIterator[RecordingUpstream]:
    async with RecordingUpstream() as server:
        yield server


@pytest.fixture
def make_dispatcher(relay: DirectRelay) -> MakeDispatcher:
    def make(*sources: UpstreamSource, rules: dict[str, ModelRule] | None = None) -> Dispatcher:
        router = Router(Catalogue(sources, relay, rules), cooldown_s=60, prefix_affinity=False)
        return Dispatcher(router, relay, GatewayMetrics(), None, max_attempts=3)

    return make


def ctx(principal: Principal | None = None) -> CallContext:
    return CallContext(
        principal or Principal(user="alice"),
        "0f8fad5b-d9cb-469f-a165-70867728950e",
        "chat.completions",
        "chat/completions",
        time.perf_counter(),
    )


async def collect(opened: ClientStream | UpstreamReply) -> list[bytes]:
    assert isinstance(opened, ClientStream)
    return [event async for event in opened]


@pytest.mark.parametrize(
    ("stream_options", "client_gets_usage"),
    [
        (None, False),
        ({"include_usage": False}, False),
        ({"include_usage": True}, True),
        ({"include_usage": False, "continuous_usage_stats": True}, False),
    ],
)
async def test_upstream_is_always_asked_for_usage(
    up: RecordingUpstream,
    make_dispatcher: MakeDispatcher,
    stream_options: dict[str, Any] | None,
    client_gets_usage: bool,
) -> None:
    dispatcher = make_dispatcher(UpstreamSource(up.upstream(), ("m",)))
    up.reply = up.sse_reply(CONTENT, USAGE, DONE)
    payload: dict[str, Any] = {"model": "m", "messages": MESSAGES, "stream": True}
    if stream_options is not None:
        payload["stream_options"] = stream_options
    before = copy.deepcopy(payload)

    events = await collect(await dispatcher.stream(ctx(), payload))

    sent = up.seen[-1].json()
    assert sent["stream_options"] == {**(stream_options or {}), "include_usage": True}
    assert {k: v for k, v in sent.items() if k != "stream_options"} == {
        k: v for k, v in before.items() if k != "stream_options"
    }
    assert payload == before  # the caller's payload is not changed
    assert (USAGE in events) is client_gets_usage
    assert events[-1] == DONE
    assert dispatcher.router.in_flight(up.upstream().name) == 0


async def test_unary_passes_the_body_through(up: RecordingUpstream, make_dispatcher: MakeDispatcher) -> None:
    dispatcher = make_dispatcher(UpstreamSource(up.upstream(), ("m",)))
    answer = {"id": "x", "model": "m", "usage": {"prompt_tokens": 4, "completion_tokens": 1}}
    up.reply = json_reply(answer)
    payload = {"model": "m", "messages": MESSAGES, "top_k": 5, "vendor": {"nested": [1, None]}}

    reply = await dispatcher.unary(ctx(), payload)

    assert (reply.status, orjson.loads(reply.body)) == (200, answer)
    assert up.seen[-1].json() == payload  # unknown fields reach the worker, nothing is added
    assert up.seen[-1].headers["X-Request-ID"] == "0f8fad5b-d9cb-469f-a165-70867728950e"


async def test_served_name_is_sent_and_public_name_returned(
    up: RecordingUpstream, make_dispatcher: MakeDispatcher
) -> None:
    dispatcher = make_dispatcher(
        UpstreamSource(up.upstream(), ("org/engine-name",)),
        rules={"public": ModelRule(served_name="org/engine-name")},
    )
    up.reply = up.sse_reply(
        CONTENT.replace(b'"model":"m"', b'"model":"org/engine-name"'),
        USAGE.replace(b'"model":"m"', b'"model":"org/engine-name"'),
        DONE,
    )
    events = await collect(
        await dispatcher.stream(ctx(), {"model": "public", "messages": MESSAGES, "stream": True})
    )
    assert up.seen[-1].json()["model"] == "org/engine-name"
    assert [orjson.loads(data_of(e) or b"")["model"] for e in events[:-1]] == ["public"]

    up.reply = json_reply({"id": "x", "model": "org/engine-name"})
    reply = await dispatcher.unary(ctx(), {"model": "public", "messages": MESSAGES})
    assert orjson.loads(reply.body)["model"] == "public"


async def test_stream_fails_over_before_the_first_byte(
    up: RecordingUpstream, second: RecordingUpstream, make_dispatcher: MakeDispatcher
) -> None:
    bad, good = up.upstream("bad"), second.upstream("good")
    dispatcher = make_dispatcher(UpstreamSource(bad, ("m",)), UpstreamSource(good, ("m",)))
    up.reply = json_reply({"error": {"message": "overloaded"}}, status=503)
    second.reply = second.sse_reply(CONTENT, USAGE, DONE)

    for _ in range(2):  # whichever the router tries first, the answer comes from `good`
        events = await collect(
            await dispatcher.stream(ctx(), {"model": "m", "messages": MESSAGES, "stream": True})
        )
        assert events[-1] == DONE
        assert b"error" not in b"".join(events)
    assert len(second.seen) == 2
    assert len(up.seen) == 1  # after its failure `bad` is put last, so it is not tried again
    assert [d.upstream.name for d in dispatcher.router.candidates("m")] == ["good", "bad"]


async def test_stream_that_ends_before_any_event_fails_over(
    up: RecordingUpstream, second: RecordingUpstream, make_dispatcher: MakeDispatcher
) -> None:
    empty, good = up.upstream("empty"), second.upstream("good")
    dispatcher = make_dispatcher(UpstreamSource(empty, ("m",)), UpstreamSource(good, ("m",)))
    up.reply = up.sse_reply()  # 200 text/event-stream, then EOF: nothing was answered
    second.reply = second.sse_reply(CONTENT, DONE)
    for _ in range(2):
        events = await collect(
            await dispatcher.stream(ctx(), {"model": "m", "messages": MESSAGES, "stream": True})
        )
        assert events == [CONTENT.replace(b',"usage":null', b""), DONE]
    assert len(up.seen) <= 1
    assert dispatcher.router.in_flight("empty") == dispatcher.router.in_flight("good") == 0

    only_empty = make_dispatcher(UpstreamSource(empty, ("m",)))
    with pytest.raises(UpstreamError):
        await only_empty.stream(ctx(), {"model": "m", "messages": MESSAGES, "stream": True})
    assert only_empty.router.in_flight("empty") == 0


async def test_worker_4xx_is_returned(up: RecordingUpstream, make_dispatcher: MakeDispatcher) -> None:
    dispatcher = make_dispatcher(UpstreamSource(up.upstream(), ("m",)))
    up.reply = json_reply({"error": {"message": "too long", "code": "context_length"}}, status=400)
    opened = await dispatcher.stream(ctx(), {"model": "m", "messages": MESSAGES, "stream": True})
    assert isinstance(opened, UpstreamReply)
    assert opened.status == 400
    reply = await dispatcher.unary(ctx(), {"model": "m", "messages": MESSAGES})
    assert reply.status == 400
    assert len(up.seen) == 2  # a 4xx is the request's fault: no failover, no retry
    assert dispatcher.router.in_flight(up.upstream().name) == 0


async def test_unknown_and_forbidden_models(up: RecordingUpstream, make_dispatcher: MakeDispatcher) -> None:
    dispatcher = make_dispatcher(UpstreamSource(up.upstream(), ("m",)))
    with pytest.raises(ModelNotFound):
        await dispatcher.unary(ctx(), {"model": "nope", "messages": MESSAGES})
    limited = Principal(user="bob", models=frozenset({"other"}))
    with pytest.raises(PermissionDenied):
        await dispatcher.stream(ctx(limited), {"model": "m", "messages": MESSAGES, "stream": True})
    assert up.seen == []
