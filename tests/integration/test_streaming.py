"""Streaming through the gateway when things go wrong: clients leaving, workers dying,
workers refusing before the first byte (fail over)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

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
from tests.support.procs import free_port


@pytest.fixture
def slow_sim(logs: Path) -> Iterator[Sim]:
    s = start_sim(logs, model="slow-model", ttft_ms=20, itl_ms=40)
    yield s
    s.proc.stop()


@pytest.fixture
def gw_slow(logs: Path, slow_sim: Sim, tmp_path: Path) -> Iterator[Gateway]:
    g = start_gateway(
        logs, clusters={"c": {"upstreams": [upstream(slow_sim, "s")]}}, store_url=f"sqlite:///{tmp_path}/h.db"
    )
    yield g
    g.stop()


def _stream_request(gw: Gateway, max_tokens: int = 200) -> httpx.Request:
    body = {"model": "slow-model", "prompt": "go", "max_tokens": max_tokens, "stream": True}
    return httpx.Request(
        "POST", f"{gw.url}/completions", json=body, headers={"Authorization": f"Bearer {gw.api_key}"}
    )


def test_client_disconnect_mid_stream_cancels_upstream(gw_slow: Gateway, slow_sim: Sim) -> None:
    before = sim_metric(slow_sim, "hearth_sim_requests_cancelled_total")
    with httpx.Client(timeout=10) as client:
        resp = client.send(_stream_request(gw_slow), stream=True)
        lines = resp.iter_lines()
        got = [next(lines) for _ in range(6)]
        assert any(line.startswith("data: {") for line in got)
        resp.close()  # the client goes away mid-stream
    assert wait_for(lambda: sim_metric(slow_sim, "hearth_sim_requests_cancelled_total") == before + 1)
    assert wait_for(lambda: sim_metric(slow_sim, "vllm:num_requests_running") == 0)


def test_client_disconnect_while_waiting_cancels_upstream(gw_slow: Gateway, slow_sim: Sim) -> None:
    """A non-streaming request abandoned before the answer stops the worker too."""
    before = sim_metric(slow_sim, "hearth_sim_requests_cancelled_total")
    body = {"model": "slow-model", "prompt": "go", "max_tokens": 200}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{gw_slow.url}/completions",
            json=body,
            headers={"Authorization": f"Bearer {gw_slow.api_key}"},
            timeout=0.5,
        )
    assert wait_for(lambda: sim_metric(slow_sim, "hearth_sim_requests_cancelled_total") == before + 1)


def test_upstream_dying_mid_stream_ends_with_error_event(gw_slow: Gateway, slow_sim: Sim) -> None:
    body = {"model": "slow-model", "prompt": "go", "max_tokens": 200, "stream": True}
    rest = interrupted_stream(gw_slow, body, slow_sim.proc.kill)  # the worker dies (SIGKILL), mid-stream
    assert_ends_with_error_event(rest)


def test_sdk_raises_on_mid_stream_failure(gw_slow: Gateway, slow_sim: Sim) -> None:
    stream = gw_slow.client().completions.create(model="slow-model", prompt="go", max_tokens=200, stream=True)
    it = iter(stream)
    next(it)
    slow_sim.proc.kill()
    with pytest.raises(openai.APIError, match="mid-stream"):
        for _ in it:
            pass


def test_failover_before_first_byte(logs: Path, sim: Sim, tmp_path: Path) -> None:
    failing = start_sim(logs, model="sim-model", fail_status=500)
    try:
        dead = {"name": "dead", "url": f"http://127.0.0.1:{free_port()}/v1", "models": ["sim-model"]}
        clusters = {
            "a": {"upstreams": [dead, upstream(failing, "failing", models=["sim-model"])]},
            "b": {"upstreams": [upstream(sim, "good")]},
        }
        gw = start_gateway(logs, clusters=clusters, store_url=f"sqlite:///{tmp_path}/h.db",
                           relay={"failure_cooldown_s": 0})  # fmt: skip
        try:
            client = gw.client()
            for _ in range(6):  # every request lands, whichever upstream the router tries first
                reply = client.completions.create(model="sim-model", prompt="x", max_tokens=2)
                assert reply.choices[0].text
                chunks = list(
                    client.completions.create(model="sim-model", prompt="x", max_tokens=2, stream=True)
                )
                assert sum(1 for c in chunks if c.choices and c.choices[0].text) == 2
            metrics = httpx.get(f"{gw.root}/metrics").text
            assert 'hearth_upstream_failures_total{reason="connect",upstream="a/dead"}' in metrics
            assert 'hearth_upstream_failures_total{reason="bad_response",upstream="a/failing"}' in metrics
        finally:
            gw.stop()
    finally:
        failing.proc.stop()
