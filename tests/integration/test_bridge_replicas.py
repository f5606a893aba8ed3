"""Two gateway replicas sharing the machine's Redis, in front of one compute cluster: gateway A's
callback URL points at gateway B, so the events of A's streams go site → B → Redis → A (as
when a load balancer sends the callback to another replica)."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.gateway import (
    Gateway,
    Sim,
    interrupted_stream,
    sim_metric,
    start_gateway,
    start_sim,
    upstream,
    wait_for,
)

REDIS = {"url": "redis://127.0.0.1:6379/0"}


@pytest.fixture(scope="module")
def site_sim(logs: Path) -> Iterator[Sim]:
    s = start_sim(logs, model="replica-model", ttft_ms=5, itl_ms=20)
    yield s
    s.proc.stop()


@pytest.fixture(scope="module")
def replicas(
    logs: Path, site_sim: Sim, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Gateway, Gateway]]:
    """(A, B): two gateways with the same cluster and Redis; A's sites call back to B."""
    tmp = tmp_path_factory.mktemp("replicas")

    def cluster(name: str) -> dict[str, Any]:
        return {
            "relay": "compute",
            "compute": {"mode": "local", "provider": "local", "max_workers": 2, "run_dir": str(tmp / name)},
            "upstreams": [upstream(site_sim, "w0", models=["replica-model"])],
        }

    b = start_gateway(logs, clusters={"site": cluster("b")}, store_url=f"sqlite:///{tmp}/b.db", redis=REDIS)
    b.proc.timeout = 120
    try:
        a = start_gateway(
            logs, clusters={"site": cluster("a")}, store_url=f"sqlite:///{tmp}/a.db", redis=REDIS,
            server={"callback_url": b.root},
        )  # fmt: skip
        a.proc.timeout = 120
    except BaseException:
        b.stop()
        raise
    yield a, b
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # each takes seconds to shut down
        list(pool.map(Gateway.stop, (a, b)))


def callbacks_in_log(gw: Gateway, status: int | None = None) -> int:
    """Callback requests in the gateway's access log (with that status)."""
    lines = gw.proc.log_path.read_text().splitlines()
    wanted = f'"status":{status}' if status is not None else ""
    return sum("/internal/streams/" in line and wanted in line for line in lines)


def test_stream_through_another_replica(replicas: tuple[Gateway, Gateway]) -> None:
    a, b = replicas
    before = callbacks_in_log(b, 204)
    chunks = list(
        a.client().chat.completions.create(
            model="replica-model", messages=[{"role": "user", "content": "x"}], max_tokens=6, stream=True,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(texts) == 6
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 6
    # The site called back to B, never to A.
    assert wait_for(lambda: callbacks_in_log(b, 204) == before + 1, 5)
    assert callbacks_in_log(a) == 0

    reply = a.client().chat.completions.create(
        model="replica-model", messages=[{"role": "user", "content": "a b"}], max_tokens=4
    )
    assert reply.choices[0].message.content
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 4


def test_client_leaving_reaches_the_site_through_redis(
    replicas: tuple[Gateway, Gateway], site_sim: Sim
) -> None:
    a, b = replicas
    refused = callbacks_in_log(b, 410)
    before = sim_metric(site_sim, "hearth_sim_requests_cancelled_total")
    interrupted_stream(a, {"model": "replica-model", "prompt": "go", "max_tokens": 500, "stream": True}, None)
    # A deletes the stream's keys; B's callback finds them gone (410) and the site stops the engine.
    assert wait_for(lambda: sim_metric(site_sim, "hearth_sim_requests_cancelled_total") == before + 1, 15)
    assert wait_for(lambda: callbacks_in_log(b, 410) == refused + 1, 5)
