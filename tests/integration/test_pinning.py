"""Pinning a request to a cluster: `model@cluster` or the X-Hearth-Cluster header."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from typer.testing import CliRunner

from gateway.cli import app
from tests.support.gateway import Gateway, Sim, start_gateway, start_sim, upstream


@pytest.fixture(scope="module")
def gw(logs: Path, sim: Sim, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    other = start_sim(logs, ttft_ms=1, itl_ms=1)
    clusters = {"alpha": {"upstreams": [upstream(sim, "s")]}, "beta": {"upstreams": [upstream(other, "s")]}}
    g = start_gateway(logs, clusters=clusters, store_url=f"sqlite:///{tmp_path_factory.mktemp('pin')}/h.db")
    yield g
    g.stop()
    other.proc.stop()


def served_by(gw: Gateway, cluster: str) -> float:
    text = httpx.get(f"{gw.root}/metrics").text
    labels = (
        f'cluster="{cluster}",endpoint="completions",model="sim-model",status="200",upstream="{cluster}/s"'
    )
    pattern = rf"^hearth_requests_total{{{labels}}} (\S+)$"
    m = re.search(pattern, text, re.M)
    return float(m.group(1)) if m else 0.0


def test_model_at_cluster_pins(gw: Gateway) -> None:
    before = served_by(gw, "beta"), served_by(gw, "alpha")
    for _ in range(4):
        reply = gw.client().completions.create(model="sim-model@beta", prompt="x", max_tokens=1)
        assert reply.model == "sim-model"
    assert (served_by(gw, "beta"), served_by(gw, "alpha")) == (before[0] + 4, before[1])


def test_header_pins(gw: Gateway) -> None:
    before = served_by(gw, "alpha"), served_by(gw, "beta")
    client = gw.client(default_headers={"X-Hearth-Cluster": "alpha"})
    for _ in range(3):
        list(client.completions.create(model="sim-model", prompt="x", max_tokens=1, stream=True))
    assert (served_by(gw, "alpha"), served_by(gw, "beta")) == (before[0] + 3, before[1])


def test_unknown_or_conflicting_cluster(gw: Gateway) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        gw.client().completions.create(model="sim-model@gamma", prompt="x", max_tokens=1)
    assert info.value.code == "model_not_on_cluster"
    with pytest.raises(openai.NotFoundError) as missing:
        gw.client().completions.create(model="nope@alpha", prompt="x", max_tokens=1)
    assert missing.value.code == "model_not_found"
    client = gw.client(default_headers={"X-Hearth-Cluster": "alpha"})
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="sim-model@beta", prompt="x", max_tokens=1)


def test_status_and_models_table(gw: Gateway) -> None:
    status = httpx.get(f"{gw.url}/status", headers={"Authorization": f"Bearer {gw.api_key}"}).json()
    (entry,) = [m for m in status["models"] if m["model"] == "sim-model"]
    assert [(c["cluster"], c["state"], c["ready"]) for c in entry["clusters"]] == [
        ("alpha", "hot", 1),
        ("beta", "hot", 1),
    ]
    assert httpx.get(f"{gw.url}/status").status_code == 401
    result = CliRunner().invoke(
        app, ["models", "--url", gw.url, "--api-key", gw.api_key], env={"COLUMNS": "120"}
    )
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if "sim-model" in line]
    assert len(rows) == 2
    assert all("hot" in row for row in rows)
    bad = CliRunner().invoke(app, ["models", "--url", gw.url, "--api-key", "wrong"])
    assert bad.exit_code == 1
    assert "HTTP 401" in bad.output
