"""Router: least loaded first (in-flight plus the engine's queue), round-robin among equals,
cooldown after a failure or while an engine stalls, prefix affinity by rendezvous hashing."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from endpoints.engine_metrics import EngineLoad
from gateway.errors import ModelNotFound
from gateway.relay.base import Upstream
from gateway.relay.direct import DirectRelay
from gateway.routing.catalogue import Catalogue, Deployment, UpstreamSource
from gateway.routing.load import LoadBoard
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


# --- load from the engines' metrics -------------------------------------------------------


def engine(
    running: int = 0, waiting: int = 0, kv: float | None = 0.1, generated: float | None = 0.0
) -> EngineLoad:
    return EngineLoad(running=running, waiting=waiting, kv_cache=kv, generated_tokens=generated)


@pytest.fixture
def board() -> LoadBoard:
    return LoadBoard(stale_after_s=60, stall_after_s=30)


def test_engine_waiting_requests_rank(catalogue: Catalogue, board: LoadBoard) -> None:
    router = Router(catalogue, board=board)
    board.update("a", engine(running=4, waiting=3))
    board.update("b", engine(running=4, waiting=1))
    board.update("c", engine(running=4, waiting=0))
    assert all(order(router) == ["c", "b", "a"] for _ in range(6))


def test_in_flight_and_engine_waiting_add_up(catalogue: Catalogue, board: LoadBoard) -> None:
    router = Router(catalogue, board=board)
    for _ in range(2):
        router.begin(dep(router, "a"))  # 2 + 0
    board.update("b", engine(waiting=4))  # 0 + 4
    router.begin(dep(router, "c"))
    board.update("c", engine(waiting=2))  # 1 + 2
    assert all(order(router) == ["a", "c", "b"] for _ in range(6))


def test_engine_running_requests_do_not_count(catalogue: Catalogue, board: LoadBoard) -> None:
    """They include this replica's own in-flight requests, which are counted already."""
    router = Router(catalogue, board=board)
    board.update("a", engine(running=50))
    assert firsts(router, 30) == {"a": 10, "b": 10, "c": 10}


def test_nearly_full_kv_cache_counts_as_a_queue(catalogue: Catalogue, board: LoadBoard) -> None:
    router = Router(catalogue, board=board)
    board.update("a", engine(kv=0.95))  # 0 waiting, but no room: like 4 waiting
    board.update("b", engine(waiting=3, kv=0.5))
    board.update("c", engine(waiting=5, kv=0.89))  # just below the line: no penalty
    assert order(router) == ["b", "a", "c"]
    board.update("a", engine(kv=0.5))
    assert order(router) == ["a", "b", "c"]


def test_stale_samples_are_ignored(catalogue: Catalogue, board: LoadBoard) -> None:
    router = Router(catalogue, board=board)
    board.update("a", engine(waiting=10), now=time.monotonic() - 61)  # older than stale_after_s
    assert firsts(router, 30) == {"a": 10, "b": 10, "c": 10}
    board.update("a", engine(waiting=10), now=time.monotonic() - 1, max_age_s=0.5)  # its own limit
    assert firsts(router, 30)["a"] == 10
    board.update("a", engine(waiting=10))
    assert all(order(router)[-1] == "a" for _ in range(6))


def stall(board: LoadBoard, name: str, *, running: int = 2) -> None:
    """Samples over 31 s (stall_after_s is 30), requests running, the counter still at 100."""
    start = time.monotonic() - 31
    for offset in (0.0, 15.0, 31.0):
        board.update(name, engine(running=running, generated=100.0), now=start + offset)


def test_stalled_engine_goes_last_and_recovers_when_its_counter_moves(
    catalogue: Catalogue, board: LoadBoard
) -> None:
    router = Router(catalogue, board=board)
    for _ in range(3):  # a stalled engine ranks behind busier ones, like an open breaker
        router.begin(dep(router, "b"))
        router.begin(dep(router, "c"))
    stall(board, "a")
    assert router.cooling("a")
    assert all(order(router)[-1] == "a" for _ in range(6))
    board.update("a", engine(running=2, generated=101.0))  # one more token: it works
    assert not router.cooling("a")
    assert all(order(router)[0] == "a" for _ in range(6))


def test_a_stale_sample_says_nothing_about_a_stall(catalogue: Catalogue) -> None:
    board = LoadBoard(stale_after_s=60, stall_after_s=30)
    router = Router(catalogue, board=board)
    stall(board, "a")
    assert router.cooling("a")
    assert not board.stalled("a", now=time.monotonic() + 61)


def test_failed_or_stalled_upstreams_rank_by_load_among_themselves(
    catalogue: Catalogue, board: LoadBoard
) -> None:
    router = Router(catalogue, board=board, cooldown_s=60)
    router.failed(dep(router, "a"))
    stall(board, "b")
    board.update("a", engine(waiting=5))
    assert order(router) == ["c", "b", "a"]


# --- prefix affinity ----------------------------------------------------------------------


def cluster_catalogue(layout: dict[str, list[str]], relay: DirectRelay) -> Catalogue:
    sources = [
        UpstreamSource(Upstream(name, cluster, f"http://127.0.0.1:9/{name}/v1"), ("m",))
        for cluster, names in layout.items()
        for name in names
    ]
    return Catalogue(sources, relay)


@pytest.fixture
async def relay() -> AsyncIterator[DirectRelay]:
    r = DirectRelay()
    yield r
    await r.close()


KEYS = [f"system prompt {i % 7}\x00question {i}".encode() for i in range(1000)]


def first(router: Router, key: bytes) -> str:
    return router.candidates("m", key)[0].upstream.name


def test_same_key_same_worker_on_every_replica(relay: DirectRelay) -> None:
    layout = {"c1": ["w0", "w1", "w2", "w3"]}
    one, two = Router(cluster_catalogue(layout, relay)), Router(cluster_catalogue(layout, relay))
    picks = [first(one, k) for k in KEYS[:100]]
    assert picks == [first(two, k) for k in KEYS[:100]]  # another replica, another process alike
    assert picks == [first(one, k) for k in KEYS[:100]]  # and again: no rotation for a key
    candidates = [d.upstream.name for d in one.candidates("m", KEYS[0])]
    assert sorted(candidates) == ["w0", "w1", "w2", "w3"]  # the others stay as fallbacks


def test_keys_spread_over_workers(relay: DirectRelay) -> None:
    router = Router(cluster_catalogue({"c1": ["w0", "w1", "w2", "w3"]}, relay))
    counts = Counter(first(router, k) for k in KEYS)
    assert set(counts) == {"w0", "w1", "w2", "w3"}
    assert min(counts.values()) >= 0.2 * len(KEYS), counts


def test_removing_a_worker_moves_only_its_keys(relay: DirectRelay) -> None:
    """Rendezvous hashing: the conversations of the other workers keep their prefix caches."""
    before = Router(cluster_catalogue({"c1": ["w0", "w1", "w2", "w3"]}, relay))
    after = Router(cluster_catalogue({"c1": ["w0", "w1", "w2"]}, relay))
    for k in KEYS[:200]:
        was = first(before, k)
        if was != "w3":
            assert first(after, k) == was


def test_affinity_yields_to_load(relay: DirectRelay) -> None:
    board = LoadBoard(stale_after_s=60)
    router = Router(cluster_catalogue({"c1": ["w0", "w1", "w2", "w3"]}, relay), board=board)
    key = KEYS[0]
    home = first(router, key)
    home_dep = dep(router, home)
    router.begin(home_dep)
    router.begin(home_dep)
    assert first(router, key) == home  # 2 busier than the others: within the slack, still home
    board.update(home, engine(waiting=1))
    assert first(router, key) != home  # 3 busier: the load wins
    assert router.candidates("m", key)[-1].upstream.name == home
    board.update(home, engine(waiting=0))
    router.end(home_dep)
    assert first(router, key) == home


def test_affinity_skips_a_failed_worker(relay: DirectRelay) -> None:
    router = Router(cluster_catalogue({"c1": ["w0", "w1", "w2", "w3"]}, relay), cooldown_s=60)
    key = KEYS[1]
    home = first(router, key)
    router.failed(dep(router, home))
    assert first(router, key) != home
    router.succeeded(dep(router, home))
    assert first(router, key) == home


def test_affinity_never_crosses_clusters(relay: DirectRelay) -> None:
    router = Router(cluster_catalogue({"near": ["n0", "n1"], "far": ["f0", "f1"]}, relay))
    for name in ("n0", "n1"):  # the near cluster is 1 busier: within the slack, but elsewhere
        router.begin(dep(router, name))
    assert {first(router, k) for k in KEYS[:200]} == {"f0", "f1"}


def test_a_key_keeps_to_one_cluster_when_clusters_tie(relay: DirectRelay) -> None:
    router = Router(cluster_catalogue({"near": ["n0", "n1"], "far": ["f0", "f1"]}, relay))
    picks = Counter(first(router, k) for k in KEYS[:400])
    assert set(picks) == {"n0", "n1", "f0", "f1"}  # spread over both
    assert all(first(router, k) == first(router, k) for k in KEYS[:50])


def test_affinity_off_or_no_key_rotates(catalogue: Catalogue) -> None:
    off = Router(catalogue, prefix_affinity=False)
    assert Counter(off.candidates("m", KEYS[0])[0].upstream.name for _ in range(30)) == {
        "a": 10, "b": 10, "c": 10,
    }  # fmt: skip
    assert firsts(Router(catalogue), 30) == {"a": 10, "b": 10, "c": 10}


def test_wants_affinity_only_with_a_choice(catalogue: Catalogue) -> None:
    assert Router(catalogue).wants_affinity("m")
    assert not Router(catalogue).wants_affinity("single")
    assert not Router(catalogue).wants_affinity("nope")
    assert not Router(catalogue, prefix_affinity=False).wants_affinity("m")
    assert order(Router(catalogue), "single") == ["solo"]
