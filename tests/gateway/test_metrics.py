"""GatewayMetrics: the names and labels the dashboard queries, the inter-token histogram, the
gauges set at scrape time, and what the dispatcher and the authenticator count (real relay,
recording upstream on loopback)."""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.auth.authenticator import Authenticator
from gateway.auth.keys import generate_key
from gateway.auth.principal import Principal
from gateway.errors import AuthenticationFailed, HearthError, ServiceUnavailable
from gateway.metrics import GatewayMetrics, LoopCounter, LoopHistogram
from gateway.relay.direct import DirectRelay
from gateway.relay.dispatch import CallContext, Dispatcher
from gateway.relay.stream import ClientStream
from gateway.routing.catalogue import Catalogue, UpstreamSource
from gateway.routing.router import Router
from tests.gateway.recording import RecordingUpstream, json_reply
from tests.support.dashboard_metrics import DASHBOARD_METRICS

# What deploy/grafana/hearth-dashboard.json and the alert rules query, as exported (with `le`).
EXPORTED: dict[str, set[str]] = {
    name: set(labels) | ({"le"} if name.endswith("_bucket") else set())
    for name, labels in DASHBOARD_METRICS.items()
}


def chunk(content: str) -> bytes:
    return (
        b'data: {"id":"c1","object":"chat.completion.chunk","model":"m",'
        b'"choices":[{"index":0,"delta":{"content":' + orjson.dumps(content) + b'}}],"usage":null}\n\n'
    )


ROLE = chunk("")  # the first chunk of a chat stream: no text
USAGE = (
    b'data: {"id":"c1","object":"chat.completion.chunk","model":"m","choices":[],'
    b'"usage":{"prompt_tokens":3,"completion_tokens":3,"total_tokens":6}}\n\n'
)
DONE = b"data: [DONE]\n\n"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def samples(metrics: GatewayMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the text exposition, by (name, labels)."""
    text = metrics.render().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(metrics: GatewayMetrics, name: str, **labels: str) -> float | None:
    return samples(metrics).get((name, frozenset(labels.items())))


def dispatcher(relay: DirectRelay, up: RecordingUpstream, metrics: GatewayMetrics) -> Dispatcher:
    router = Router(Catalogue([UpstreamSource(up.upstream(), ("m",))], relay), cooldown_s=60)
    return Dispatcher(router, relay, metrics, None)


def ctx() -> CallContext:
    return CallContext(
        Principal(user="alice"), "r-1", "chat.completions", "chat/completions", time.perf_counter()
    )


def test_every_metric_is_exported_with_the_labels_the_dashboard_uses() -> None:
    m = GatewayMetrics()
    m.child(m.requests, "chat.completions", "m", "c", "c/0", "200").inc()
    m.child(m.latency, "chat.completions", "m", "c").observe(0.1)
    m.child(m.ttft, "m", "c").observe(0.01)
    m.inter_token.labels("m", "c").observe_gaps([0.0, 0.002])
    m.child(m.tokens, "m", "c", "prompt").inc(3)
    m.child(m.upstream_failures, "c/0", "connect").inc()
    m.child(m.limiter_rejections, "requests", "user").inc()
    m.child(m.auth_decisions, "api_key", "allow").inc()
    m.child(m.scheduler_decisions, "m", "c", "start", "demand").inc()
    m.scheduler_desired.labels("m").set(2)
    m.scheduler_demand.labels("m").set(9.5)
    status = [
        {"model": "m", "clusters": [{"cluster": "c", "state": "hot", "ready": 1, "starting": 0, "queued": 0}]}
    ]
    m.set_present(
        in_flight={("m", "c/0"): 1},
        awaiting_first_byte={},
        model_status=status,
        usage_pending=0,
        usage_dropped=0,
        sites_up={"c": True},
    )
    exported: dict[str, set[str]] = {}
    for name, labels in samples(m):
        exported.setdefault(name, set()).update(k for k, _ in labels)
    for name, names in EXPORTED.items():
        assert name in exported, f"{name} is not exported"
        assert exported[name] == names, name
    assert all(n.startswith("hearth_") for n in exported)  # a registry of its own: no process_*


def test_gap_histogram_buckets_are_cumulative_and_le_inclusive() -> None:
    h = LoopHistogram("t_gap_seconds", "test", ("model",), (0.01, 0.1))
    s = h.labels("m")
    s.observe_gaps([1.0, 4.0, 4.005])  # gaps of 3 s and 5 ms
    s.observe_gaps([0.0, 0.01, 0.06])  # 10 ms (on the bound) and 50 ms
    s.observe_gaps([5.0])  # no gap
    (family,) = h.collect()
    got = {(x.name, x.labels.get("le")): x.value for x in family.samples}
    assert got[("t_gap_seconds_bucket", "0.01")] == 2  # 0.01 itself counts in le="0.01"
    assert got[("t_gap_seconds_bucket", "0.1")] == 3
    assert got[("t_gap_seconds_bucket", "+Inf")] == 4
    assert got[("t_gap_seconds_count", None)] == 4
    assert got[("t_gap_seconds_sum", None)] == pytest.approx(3.065)
    assert [x.value for x in family.samples if x.name.endswith("_bucket")] == [2, 3, 4]
    with pytest.raises(ValueError, match="labels"):
        h.labels("m", "extra")


@given(st.lists(st.floats(min_value=0, max_value=700, allow_nan=False), max_size=30))
@example([0.001, 0.0025, 600.0, 600.5])
def test_loop_metrics_export_what_prometheus_client_would(values: list[float]) -> None:
    """LoopHistogram and LoopCounter: the same exposition as prometheus_client's Histogram
    and Counter fed the same observations (but for Counter's `_created`)."""
    buckets = (0.001, 0.0025, 0.1, 1, 600)
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    hist = LoopHistogram("t_seconds", "doc", ("model",), buckets)
    count = LoopCounter("t_things", "doc", ("model",))
    ours.register(hist)
    ours.register(count)
    ref_hist = Histogram("t_seconds", "doc", ["model"], buckets=buckets, registry=theirs)
    ref_count = Counter("t_things", "doc", ["model"], registry=theirs)
    for v in values:
        hist.labels("m").observe(v)
        ref_hist.labels("m").observe(v)
        count.labels("m").inc(v)
        ref_count.labels("m").inc(v)

    def exposition(registry: CollectorRegistry) -> dict[tuple[str, str | None], float]:
        return {
            (x.name, x.labels.get("le")): x.value
            for family in text_string_to_metric_families(generate_latest(registry).decode())
            for x in family.samples
            if not x.name.endswith("_created")
        }

    mine, reference = exposition(ours), exposition(theirs)
    assert mine.keys() == reference.keys()
    for key, expected in reference.items():
        assert mine[key] == pytest.approx(expected), key
    with pytest.raises(ValueError, match="only go up"):
        count.labels("m").inc(-1)


async def test_stream_observes_each_gap_between_text_events(
    relay: DirectRelay, up: RecordingUpstream
) -> None:
    m = GatewayMetrics()
    up.reply = up.sse_reply(ROLE, chunk("a"), chunk("b"), chunk("c"), USAGE, DONE, delay_s=0.03)
    opened = await dispatcher(relay, up, m).stream(ctx(), {**CHAT, "stream": True})
    assert isinstance(opened, ClientStream)
    assert [e async for e in opened][-1] == DONE
    # Three text events: two gaps (the role chunk and the usage chunk carry no text).
    assert value(m, "hearth_inter_token_latency_seconds_count", model="m", cluster="c") == 2
    total = value(m, "hearth_inter_token_latency_seconds_sum", model="m", cluster="c")
    assert total is not None
    assert 0.05 < total < 1.0
    assert value(m, "hearth_inter_token_latency_seconds_bucket", model="m", cluster="c", le="0.001") == 0
    assert value(m, "hearth_time_to_first_token_seconds_count", model="m", cluster="c") == 1
    assert value(m, "hearth_tokens_total", model="m", cluster="c", kind="completion") == 3
    labels = {"endpoint": "chat.completions", "model": "m", "cluster": "c"}
    assert value(m, "hearth_requests_total", **labels, upstream="rec", status="200") == 1
    assert value(m, "hearth_request_duration_seconds_count", **labels) == 1


async def test_long_stream_gaps_are_all_observed(relay: DirectRelay, up: RecordingUpstream) -> None:
    """Gap times are binned in batches (of 256): none is lost or counted twice across them."""
    m = GatewayMetrics()
    up.reply = up.sse_reply(*(chunk(f"t{i}") for i in range(600)), DONE)
    opened = await dispatcher(relay, up, m).stream(ctx(), {**CHAT, "stream": True})
    assert isinstance(opened, ClientStream)
    assert len([e async for e in opened]) == 601
    assert value(m, "hearth_inter_token_latency_seconds_count", model="m", cluster="c") == 599
    assert value(m, "hearth_tokens_total", model="m", cluster="c", kind="completion") == 600


async def test_unary_counts_by_cluster_and_failures_have_no_cluster(
    relay: DirectRelay, up: RecordingUpstream
) -> None:
    m = GatewayMetrics()
    up.reply = json_reply({"usage": {"prompt_tokens": 4, "completion_tokens": 2}})
    await dispatcher(relay, up, m).unary(ctx(), dict(CHAT))
    assert value(m, "hearth_tokens_total", model="m", cluster="c", kind="prompt") == 4
    assert value(m, "hearth_tokens_total", model="m", cluster="c", kind="completion") == 2
    labels = {"endpoint": "chat.completions", "model": "m"}
    assert value(m, "hearth_requests_total", **labels, cluster="c", upstream="rec", status="200") == 1
    up.reply = json_reply({"error": "down"}, status=503)
    with pytest.raises(HearthError):
        await dispatcher(relay, up, m).unary(ctx(), dict(CHAT))
    assert value(m, "hearth_requests_total", **labels, cluster="", upstream="", status="503") == 1
    assert value(m, "hearth_upstream_failures_total", upstream="rec", reason="bad_response") == 1


async def test_queue_depth_counts_attempts_until_their_first_byte(
    relay: DirectRelay, up: RecordingUpstream
) -> None:
    m = GatewayMetrics()
    d = dispatcher(relay, up, m)

    async def until_seen(n: int) -> None:
        while len(up.seen) < n:
            await asyncio.sleep(0.005)

    up.reply = up.slow_reply(0.3)
    unary = asyncio.create_task(d.unary(ctx(), dict(CHAT)))
    await until_seen(1)
    assert d.awaiting_first_byte() == {("m", "c"): 1}
    await unary
    assert d.awaiting_first_byte() == {("m", "c"): 0}

    # A stream waits until its first event, not its end.
    up.reply = up.slow_reply(0.3, then=up.sse_reply(chunk("a"), chunk("b"), DONE, delay_s=0.3))
    opening = asyncio.create_task(d.stream(ctx(), {**CHAT, "stream": True}))
    await until_seen(2)
    assert d.awaiting_first_byte() == {("m", "c"): 1}
    opened = await opening
    assert isinstance(opened, ClientStream)
    assert d.awaiting_first_byte() == {("m", "c"): 0}
    await opened.aclose()


def test_scrape_time_gauges_follow_model_status() -> None:
    m = GatewayMetrics()

    def cluster(name: str, state: str, ready: int = 0, starting: int = 0, queued: int = 0) -> dict[str, Any]:
        return {"cluster": name, "state": state, "ready": ready, "starting": starting, "queued": queued}

    status = [
        {"model": "m", "clusters": [cluster("a", "hot", ready=2, starting=1), cluster("b", "cold")]},
        {"model": "n", "clusters": [cluster("a", "queued", queued=3)]},
    ]
    m.set_present(
        in_flight={("m", "a/0"): 2},
        awaiting_first_byte={("m", "a"): 2},
        model_status=status,
        usage_pending=5,
        usage_dropped=1,
    )
    workers = {
        (dict(k)["model"], dict(k)["cluster"], dict(k)["state"]): v
        for (name, k), v in samples(m).items()
        if name == "hearth_workers"
    }
    assert workers == {
        ("m", "a", "hot"): 2, ("m", "a", "starting"): 1, ("m", "a", "queued"): 0,
        ("m", "a", "cold"): 0, ("m", "a", "offline"): 0,
        ("m", "b", "hot"): 0, ("m", "b", "starting"): 0, ("m", "b", "queued"): 0,
        ("m", "b", "cold"): 1, ("m", "b", "offline"): 0,
        ("n", "a", "hot"): 0, ("n", "a", "starting"): 0, ("n", "a", "queued"): 3,
        ("n", "a", "cold"): 0, ("n", "a", "offline"): 0,
    }  # fmt: skip
    assert value(m, "hearth_queue_depth", model="m", cluster="a") == 2
    assert value(m, "hearth_queue_depth", model="m", cluster="b") == 0
    assert value(m, "hearth_requests_in_flight", model="m", upstream="a/0") == 2
    assert value(m, "hearth_usage_records_pending") == 5
    assert value(m, "hearth_usage_records_dropped") == 1
    # A model that is gone is gone from the gauges too.
    m.set_present(
        in_flight={}, awaiting_first_byte={}, model_status=status[:1], usage_pending=0, usage_dropped=0
    )
    assert not [k for k in samples(m) if k[0] == "hearth_workers" and ("model", "n") in k[1]]
    assert value(m, "hearth_queue_depth", model="n", cluster="a") is None


class _UnreachableGlobus:
    async def verify(self, token: str, key: str) -> Any:
        raise ServiceUnavailable("Globus Auth cannot be reached")


async def test_auth_decisions_are_counted_on_cache_misses() -> None:
    m = GatewayMetrics()
    static = {hashlib.sha256(b"sk-static").hexdigest(): Principal(user="ops")}
    auth = Authenticator(None, static, metrics=m)
    for _ in range(3):  # the second and third come from the cache
        await auth.authenticate("Bearer sk-static")
    with pytest.raises(AuthenticationFailed):
        await auth.authenticate("Bearer sk-wrong")
    with pytest.raises(AuthenticationFailed):
        await auth.authenticate(f"Bearer {generate_key()[1]}")  # well formed, but no store has it
    globus = Authenticator(None, {}, tokens=_UnreachableGlobus(), metrics=m)  # type: ignore[arg-type]
    with pytest.raises(ServiceUnavailable):
        await globus.authenticate("Bearer some-globus-token")
    decisions = {
        (dict(k)["method"], dict(k)["outcome"]): v
        for (name, k), v in samples(m).items()
        if name == "hearth_auth_decisions_total"
    }
    assert decisions == {
        ("static_key", "allow"): 1,
        ("static_key", "deny"): 1,
        ("api_key", "deny"): 1,
        ("globus", "unavailable"): 1,
    }
