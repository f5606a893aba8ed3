"""The ComputeRelay end to end: the OpenAI SDK → gateway → Globus Compute's own engine (Parsl
LocalProvider workers) running the site functions → the sim engine, streams coming back over
the callback channel."""

from __future__ import annotations

import concurrent.futures
import itertools
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from endpoints.protocol import MAX_PAYLOAD_BYTES
from tests.support.gateway import (
    Gateway,
    Sim,
    assert_ends_with_error_event,
    interrupted_stream,
    sim_metric,
    start_gateway,
    start_sim,
    upstream,
    wait_for,
)


@pytest.fixture(scope="module")
def site_sim(logs: Path) -> Iterator[Sim]:
    s = start_sim(logs, model="site-model", ttft_ms=5, itl_ms=20)
    yield s
    s.proc.stop()


@pytest.fixture(scope="module")
def fragile_sim(logs: Path) -> Iterator[Sim]:
    s = start_sim(logs, model="fragile", ttft_ms=5, itl_ms=30)
    yield s
    s.proc.stop()


@pytest.fixture(scope="module")
def gw(
    logs: Path, site_sim: Sim, fragile_sim: Sim, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("compute")
    cluster = {
        "relay": "compute",
        "compute": {"mode": "local", "provider": "local", "max_workers": 4, "run_dir": str(tmp / "run")},
        # w0's models are discovered through the list_models function; w1 is listed.
        "upstreams": [upstream(site_sim, "w0"), upstream(fragile_sim, "w1", models=["fragile"])],
    }
    g = start_gateway(
        logs, clusters={"site": cluster}, store_url=f"sqlite:///{tmp}/h.db",
        server={"max_body_bytes": 32 * 1024 * 1024}, relay={"stream_idle_timeout_s": 5},
    )  # fmt: skip
    yield g
    g.stop()


def test_models_discovered_through_compute(gw: Gateway) -> None:
    assert [m.id for m in gw.client().models.list().data] == ["fragile", "site-model"]


def test_unary_through_compute(gw: Gateway) -> None:
    reply = gw.client().chat.completions.create(
        model="site-model", messages=[{"role": "user", "content": "a b"}], max_tokens=4
    )
    assert reply.choices[0].message.content
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (2, 4)


def test_stream_through_compute_callback(gw: Gateway) -> None:
    client = gw.client()
    t0 = time.perf_counter()
    arrivals = []
    chunks = []
    for chunk in client.chat.completions.create(
        model="site-model", messages=[{"role": "user", "content": "x"}], max_tokens=6, stream=True,
        stream_options={"include_usage": True},
    ):  # fmt: skip
        arrivals.append(time.perf_counter() - t0)
        chunks.append(chunk)
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(texts) == 6
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 6
    # Tokens arrive as they are produced (20 ms apart), not all at the end.
    gaps = [b - a for a, b in itertools.pairwise(arrivals[1:-1])]
    assert max(gaps) > 0.01


def test_completions_stream_and_concurrency(gw: Gateway) -> None:
    def one(i: int) -> int:
        stream = gw.client().completions.create(
            model="site-model", prompt=f"n {i}", max_tokens=3, stream=True
        )
        return sum(1 for c in stream if c.choices and c.choices[0].text)

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        assert list(pool.map(one, range(6))) == [3] * 6


def test_client_leaving_stops_the_engine(gw: Gateway, site_sim: Sim) -> None:
    before = sim_metric(site_sim, "hearth_sim_requests_cancelled_total")
    interrupted_stream(gw, {"model": "site-model", "prompt": "go", "max_tokens": 500, "stream": True}, None)
    # The gateway tells the site function (410 on its callback); it closes the engine stream.
    assert wait_for(lambda: sim_metric(site_sim, "hearth_sim_requests_cancelled_total") == before + 1, 15)


def test_payload_over_the_compute_limit_is_413(gw: Gateway) -> None:
    big = "x " * (MAX_PAYLOAD_BYTES // 2 + 1000)
    with pytest.raises(openai.APIStatusError) as info:
        gw.client().completions.create(model="site-model", prompt=big, max_tokens=1)
    assert info.value.status_code == 413
    assert "Globus Compute" in info.value.message


def test_callback_needs_the_stream_secret(gw: Gateway) -> None:
    resp = httpx.post(
        f"{gw.root}/internal/streams/nope", content=b"data: x\n\n", headers={"Authorization": "Bearer x"}
    )
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "not_found"


def test_worker_dying_mid_stream_through_compute(gw: Gateway, fragile_sim: Sim) -> None:
    body = {"model": "fragile", "prompt": "go", "max_tokens": 200, "stream": True}
    rest = interrupted_stream(gw, body, fragile_sim.proc.kill)  # the worker dies mid-stream
    assert_ends_with_error_event(rest)


def test_gateway_stops_promptly_when_its_unit_is_stopped(logs: Path, site_sim: Sim, tmp_path: Path) -> None:
    """systemd (or the tests) signal the whole process group, Globus Compute's interchange and
    worker pool included; the gateway must still exit, not wait on them forever."""
    cluster = {
        "relay": "compute",
        "compute": {"mode": "local", "run_dir": str(tmp_path / "run")},
        "upstreams": [upstream(site_sim, "w0", models=["site-model"])],
    }
    g = start_gateway(logs, clusters={"site": cluster}, store_url=f"sqlite:///{tmp_path}/h.db")
    assert g.proc.proc is not None
    started = time.monotonic()
    os.killpg(g.proc.proc.pid, signal.SIGTERM)
    try:
        g.proc.proc.wait(timeout=20)
    finally:
        g.proc.kill()
    assert time.monotonic() - started < 20
