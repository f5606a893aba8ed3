"""Router: least in-flight first, round-robin among equals, cooldown after a failure."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from gateway.errors import ModelNotFound
from gateway.relay.base import Upstream
from gateway.relay.direct import DirectRelay
from gateway.routing.catalogue import Catalogue, Deployment, UpstreamSource
from gateway.routing.router import Router

NAMES = ("a", "b", "c")


@pytest.fixture
async def catalogue() -> AsyncIterator[Catalogue]:
    """Three upstreams serving model `m` (static: the relay is never called)."""
    relay = DirectRelay()
    sources = [
        UpstreamSource(Upstream(name, "c1", f"http://127.0.0.1:9/{name}/v1"), ("m",)) for name in NAMES
    ]
    sources.append(UpstreamSource(Upstream("solo", "c1", "http://127.0.0.1:9/solo/v1"), ("single",)))
    yield Catalogue(sources, relay)
    await relay.close()


def dep(router: Router, name: str, model: str = "m") -> Deployment:
    return next(d for d in router.catalogue.deployments(model) if d.upstream.name == name)


def order(router: Router, model: str = "m") -> list[str]:
    return [d.upstream.name for d in router.candidates(model)]


def firsts(router: Router, n: int) -> Counter[str]:
    return Counter(order(router)[0] for _ in range(n))


def test_least_in_flight_first(catalogue: Catalogue) -> None:
    router = Router(catalogue)
    for _ in range(2):
        router.begin(dep(router, "a"))
    router.begin(dep(router, "b"))
    for _ in range(6):
        assert order(router) == ["c", "b", "a"]
    router.end(dep(router, "a"))
    router.end(dep(router, "a"))
    assert router.in_flight("a") == 0
    assert router.in_flight("b") == 1
    assert order(router)[-1] == "b"


def test_round_robin_spreads_over_equal_upstreams(catalogue: Catalogue) -> None:
    router = Router(catalogue)
    for _ in range(10):
        assert sorted(order(router)) == sorted(NAMES)  # every candidate, each once
    assert firsts(router, 30) == {"a": 10, "b": 10, "c": 10}


def test_round_robin_only_among_the_least_loaded(catalogue: Catalogue) -> None:
    router = Router(catalogue)
    router.begin(dep(router, "a"))
    seen = [order(router) for _ in range(30)]
    assert all(o[-1] == "a" for o in seen)
    assert set(Counter(o[0] for o in seen)) == {"b", "c"}


@pytest.mark.parametrize("handicap", ["busy", "cooling"])
def test_round_robin_is_even_among_the_least_loaded(catalogue: Catalogue, handicap: str) -> None:
    router = Router(catalogue, cooldown_s=60)
    if handicap == "busy":
        router.begin(dep(router, "a"))
    else:  # e.g. a dead node: it keeps failing, so it is always cooling down
        router.failed(dep(router, "a"))
    counts = firsts(router, 30)
    assert counts["a"] == 0
    assert abs(counts["b"] - counts["c"]) <= 2, counts


def test_failed_upstream_goes_last_until_the_cooldown_ends(catalogue: Catalogue) -> None:
    router = Router(catalogue, cooldown_s=0.2)
    router.failed(dep(router, "a"))
    for _ in range(3):  # cooling down weighs more than load
        router.begin(dep(router, "b"))
        router.begin(dep(router, "c"))
    for _ in range(10):
        assert order(router)[-1] == "a"
    time.sleep(0.25)
    assert all(order(router)[0] == "a" for _ in range(5))  # back, and now the least loaded


def test_success_ends_the_cooldown(catalogue: Catalogue) -> None:
    router = Router(catalogue, cooldown_s=60)
    router.failed(dep(router, "a"))
    assert all(order(router)[-1] == "a" for _ in range(6))
    router.succeeded(dep(router, "a"))
    assert firsts(router, 30) == {"a": 10, "b": 10, "c": 10}


def test_failure_threshold(catalogue: Catalogue) -> None:
    router = Router(catalogue, cooldown_s=60, failure_threshold=2)
    router.failed(dep(router, "a"))
    assert firsts(router, 30)["a"] == 10  # one failure is tolerated
    router.failed(dep(router, "a"))
    assert all(order(router)[-1] == "a" for _ in range(6))


def test_a_cooling_upstream_is_still_tried_when_it_is_the_only_one(catalogue: Catalogue) -> None:
    router = Router(catalogue, cooldown_s=60)
    router.failed(dep(router, "solo", "single"))
    assert order(router, "single") == ["solo"]


def test_unknown_model(catalogue: Catalogue) -> None:
    router = Router(catalogue)
    with pytest.raises(ModelNotFound) as info:
        router.candidates("nope")
    err = info.value
    assert (err.status, err.param, err.error_code) == (404, "model", "model_not_found")
    assert "`nope`" in err.message
