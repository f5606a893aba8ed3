"""Catalogue: static models, discovery from real upstreams (GET /v1/models), model rules."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.relay.base import Upstream
from gateway.relay.direct import DirectRelay
from gateway.routing.catalogue import Catalogue, ModelRule, UpstreamSource
from tests.gateway.recording import RecordingUpstream, json_reply
from tests.support.procs import free_port


@pytest.fixture
async def relay() -> AsyncIterator[DirectRelay]:
    r = DirectRelay(connect_timeout_s=1.0)
    yield r
    await r.close()


@pytest.fixture
async def up() -> AsyncIterator[RecordingUpstream]:
    async with RecordingUpstream() as server:
        yield server


def model_list(*ids: str) -> dict[str, object]:
    return {"object": "list", "data": [{"id": i, "object": "model", "owned_by": "vllm"} for i in ids]}


def static(name: str, cluster: str, *models: str) -> UpstreamSource:
    return UpstreamSource(Upstream(name, cluster, f"http://127.0.0.1:9/{name}/v1"), models)


def where(catalogue: Catalogue, model: str) -> list[tuple[str, str]]:
    """(upstream name, the engine's model name) of each deployment of `model`."""
    return [(d.upstream.name, d.upstream_model) for d in catalogue.deployments(model)]


def names(catalogue: Catalogue) -> list[str]:
    return [m for m, _ in catalogue.models()]


async def test_static_models(relay: DirectRelay) -> None:
    catalogue = Catalogue([static("x/0", "x", "b", "a"), static("y/0", "y", "a")], relay)
    assert names(catalogue) == ["a", "b"]  # sorted
    assert where(catalogue, "a") == [("x/0", "a"), ("y/0", "a")]
    assert where(catalogue, "b") == [("x/0", "b")]
    assert catalogue.deployments("nope") == ()
    assert all(isinstance(created, int) and created > 0 for _, created in catalogue.models())
    await catalogue.refresh()  # nothing to discover: unchanged, and no request is made
    assert names(catalogue) == ["a", "b"]


async def test_discovery(relay: DirectRelay, up: RecordingUpstream) -> None:
    up.reply = json_reply(model_list("llama", "qwen"))
    catalogue = Catalogue([UpstreamSource(up.upstream("x/0"), None), static("y/0", "y", "qwen")], relay)
    assert names(catalogue) == ["qwen"]  # before the first refresh only the static one is known

    await catalogue.refresh()

    assert names(catalogue) == ["llama", "qwen"]
    assert where(catalogue, "qwen") == [("x/0", "qwen"), ("y/0", "qwen")]
    (seen,) = up.seen
    assert (seen.method, seen.path, seen.headers["Authorization"]) == ("GET", "/v1/models", "Bearer up-key")


async def test_models_follow_the_upstream(relay: DirectRelay, up: RecordingUpstream) -> None:
    up.reply = json_reply(model_list("a", "b"))
    catalogue = Catalogue([UpstreamSource(up.upstream(), None)], relay)
    await catalogue.refresh()
    created = dict(catalogue.models())

    up.reply = json_reply(model_list("b", "c"))
    await catalogue.refresh()

    assert names(catalogue) == ["b", "c"]  # `a` is no longer served: gone
    assert dict(catalogue.models())["b"] == created["b"]  # first-seen time kept


@pytest.mark.parametrize("failure", ["http-500", "not-a-model-list"])
async def test_failed_discovery_keeps_the_last_known_models(
    relay: DirectRelay, up: RecordingUpstream, failure: str
) -> None:
    up.reply = json_reply(model_list("a", "b"))
    catalogue = Catalogue([UpstreamSource(up.upstream("x/0"), None)], relay)
    await catalogue.refresh()

    if failure == "http-500":
        up.reply = json_reply({"error": "down"}, status=500)
    else:
        up.reply = json_reply({"unexpected": True})
    await catalogue.refresh()  # logs a warning, raises nothing

    assert len(up.seen) == 2
    assert names(catalogue) == ["a", "b"]
    assert where(catalogue, "a") == [("x/0", "a")]


async def test_unreachable_upstream_keeps_the_last_known_models(relay: DirectRelay) -> None:
    async with RecordingUpstream() as server:
        server.reply = json_reply(model_list("a"))
        catalogue = Catalogue([UpstreamSource(server.upstream("x/0"), None)], relay)
        await catalogue.refresh()
    # The server is gone: its port now refuses connections.
    await catalogue.refresh()
    assert where(catalogue, "a") == [("x/0", "a")]


async def test_unreachable_from_the_start_serves_nothing(relay: DirectRelay) -> None:
    dead = UpstreamSource(Upstream("dead", "c", f"http://127.0.0.1:{free_port()}/v1"), None)
    catalogue = Catalogue([dead, static("ok", "c", "m")], relay)
    await catalogue.refresh()
    assert names(catalogue) == ["m"]


async def test_rule_restricts_clusters(relay: DirectRelay) -> None:
    sources = [static("x/0", "x", "m", "n"), static("y/0", "y", "m"), static("z/0", "z", "m")]
    rules = {"m": ModelRule(clusters=frozenset({"x", "z"})), "n": ModelRule(clusters=frozenset({"y"}))}
    catalogue = Catalogue(sources, relay, rules)
    assert where(catalogue, "m") == [("x/0", "m"), ("z/0", "m")]
    assert catalogue.deployments("n") == ()  # allowed only where it does not run
    assert names(catalogue) == ["m"]


async def test_served_name_maps_public_to_engine_name(relay: DirectRelay, up: RecordingUpstream) -> None:
    up.reply = json_reply(model_list("meta-llama/Llama-3.1-8B-Instruct"))
    rules = {"llama-8b": ModelRule(served_name="meta-llama/Llama-3.1-8B-Instruct")}
    catalogue = Catalogue([UpstreamSource(up.upstream("x/0"), None)], relay, rules)
    await catalogue.refresh()

    assert names(catalogue) == ["llama-8b"]
    (deployment,) = catalogue.deployments("llama-8b")
    assert (deployment.model, deployment.upstream_model) == ("llama-8b", "meta-llama/Llama-3.1-8B-Instruct")
    assert catalogue.deployments("meta-llama/Llama-3.1-8B-Instruct") == ()


async def test_rules_are_an_allow_list(relay: DirectRelay) -> None:
    sources = [static("x/0", "x", "allowed", "unlisted", "engine-name")]
    open_catalogue = Catalogue(sources, relay)
    assert names(open_catalogue) == ["allowed", "engine-name", "unlisted"]  # no rules: everything

    rules = {"allowed": ModelRule(), "public": ModelRule(served_name="engine-name")}
    catalogue = Catalogue(sources, relay, rules)
    assert names(catalogue) == ["allowed", "public"]
    assert catalogue.deployments("unlisted") == ()


async def test_rule_for_a_model_nobody_serves(relay: DirectRelay) -> None:
    catalogue = Catalogue([static("x/0", "x", "m")], relay, {"m": ModelRule(), "ghost": ModelRule()})
    assert names(catalogue) == ["m"]
