"""The load board (fresh and stale samples, stalled engines), the poller of `direct` upstreams
against real engines on loopback, and the load a site reports with its workers."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from endpoints.engine_metrics import EngineLoad
from endpoints.protocol import FUNCTIONS_VERSION
from gateway.relay.base import Upstream
from gateway.relay.bridge import LocalStreamBridge
from gateway.relay.compute import ComputeRelay
from gateway.routing.load import KV_FULL_PENALTY, DirectLoadPoller, LoadBoard, load_from_wire
from gateway.routing.sites import SiteDirectory
from tests.gateway.recording import RecordingUpstream, raw_reply
from tests.support.gateway import Sim, start_sim
from tests.support.procs import free_port


def engine(
    running: int = 0, waiting: int = 0, kv: float | None = 0.1, generated: float | None = 0.0
) -> EngineLoad:
    return EngineLoad(running=running, waiting=waiting, kv_cache=kv, generated_tokens=generated)


# --- the board ----------------------------------------------------------------------------


def test_latest_sample_is_kept_and_goes_stale() -> None:
    board = LoadBoard(stale_after_s=6, stall_after_s=30)
    assert board.get("a") is None
    assert board.fresh("a") is None
    board.update("a", engine(waiting=1), now=100.0)
    board.update("a", engine(waiting=2), now=101.0)
    assert board.get("a") == engine(waiting=2)
    sample = board.fresh("a", now=106.9)
    assert sample is not None
    assert sample.at == 101.0
    assert sample.pressure == 2
    assert board.fresh("a", now=107.0) is None  # stale: not used for ranking
    assert board.get("a") == engine(waiting=2)  # but still there to show
    board.update("a", engine(), now=200.0, max_age_s=90)  # a source read less often
    assert board.fresh("a", now=289.0) is not None
    assert board.fresh("a", now=290.0) is None


@pytest.mark.parametrize(
    ("load", "expected"),
    [
        (engine(running=9), 0),
        (engine(waiting=3), 3),
        (engine(waiting=3, kv=0.9), 3 + KV_FULL_PENALTY),
        (engine(waiting=0, kv=1.0), KV_FULL_PENALTY),
        (engine(waiting=2, kv=0.899), 2),
        (engine(waiting=2, kv=None), 2),
    ],
)
def test_pressure_is_waiting_plus_a_full_cache(load: EngineLoad, expected: int) -> None:
    board = LoadBoard()
    board.update("a", load, now=0.0)
    assert board.samples["a"].pressure == expected


def feed(board: LoadBoard, samples: list[tuple[float, EngineLoad]]) -> list[bool]:
    """Feed (time, load) samples; whether the engine counts as stalled after each."""
    out = []
    for at, load in samples:
        board.update("a", load, now=at)
        out.append(board.stalled("a", now=at))
    return out


def test_stalled_after_stall_after_s_of_running_with_a_still_counter() -> None:
    board = LoadBoard(stale_after_s=6, stall_after_s=30)
    still = engine(running=2, generated=500.0)
    assert feed(board, [(0.0, still), (10.0, still), (29.9, still), (30.0, still), (32.0, still)]) == [
        False, False, False, True, True,
    ]  # fmt: skip
    assert feed(board, [(34.0, engine(running=2, generated=501.0))]) == [False]  # it moved: recovered
    assert feed(board, [(50.0, engine(running=2, generated=501.0))]) == [False]  # 16 s still: not yet
    assert feed(board, [(64.0, engine(running=2, generated=501.0))]) == [True]


def test_not_stalled_when_idle_in_between_or_restarted() -> None:
    board = LoadBoard(stale_after_s=6, stall_after_s=30)
    assert feed(
        board,
        [
            (0.0, engine(running=1, generated=7.0)),
            (20.0, engine(running=0, generated=7.0)),  # idle: nothing to make progress on
            (40.0, engine(running=1, generated=7.0)),
            (60.0, engine(running=1, generated=7.0)),
            (70.0, engine(running=1, generated=7.0)),
            (80.0, engine(running=1, generated=0.0)),  # a new engine under the same name
            (100.0, engine(running=1, generated=3.0)),
        ],
    ) == [False, False, False, False, True, False, False]


def test_an_engine_without_a_counter_is_never_stalled() -> None:
    board = LoadBoard(stale_after_s=6, stall_after_s=30)
    quiet = engine(running=3, generated=None)
    assert feed(board, [(0.0, quiet), (40.0, quiet), (80.0, quiet)]) == [False, False, False]


def test_forget_drops_what_is_not_present() -> None:
    board = LoadBoard()
    for name in ("hpc/w1", "hpc/w2", "other/w1", "direct/0"):
        board.update(name, engine())
    board.forget({"hpc/w2"}, prefix="hpc/")
    assert set(board.samples) == {"hpc/w2", "other/w1", "direct/0"}
    board.forget(set())
    assert not board.samples


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        (
            {"running": 2, "waiting": 1, "kv_cache": 0.5, "generated_tokens": 1234.0},
            EngineLoad(running=2, waiting=1, kv_cache=0.5, generated_tokens=1234.0),
        ),
        (
            {"running": 2.0, "waiting": 0, "kv_cache": None, "generated_tokens": None},
            EngineLoad(running=2, waiting=0, kv_cache=None, generated_tokens=None),
        ),
        (
            {"running": 1, "waiting": 0},  # an older site: no cache or counter
            EngineLoad(running=1, waiting=0, kv_cache=None, generated_tokens=None),
        ),
        (None, None),
        ("busy", None),
        ({"waiting": 1}, None),
        ({"running": "2", "waiting": 1}, None),
        ({"running": True, "waiting": 1}, None),
        ({"running": 1, "waiting": 1, "kv_cache": "full"}, None),
    ],
)
def test_load_from_a_sites_json(wire: object, expected: EngineLoad | None) -> None:
    assert load_from_wire(wire) == expected


# --- polling engines that the gateway reaches directly --------------------------------------


def upstream_of(sim: Sim, name: str = "direct/0") -> Upstream:
    return Upstream(name=name, cluster="direct", base_url=sim.url, api_key=sim.api_key)


async def poll_until(poller: DirectLoadPoller, name: str, done: Any, timeout_s: float = 20.0) -> EngineLoad:
    """Poll until the upstream's load satisfies `done` (requests reach the engine in their own time)."""
    deadline = time.monotonic() + timeout_s
    while True:
        await poller.poll_once()
        load = poller.board.get(name)
        if load is not None and done(load):
            return load
        assert time.monotonic() < deadline, load
        await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
def busy_sim(logs: Path) -> Iterator[Sim]:
    """A sim engine with one slot whose first token takes a minute: requests pile up."""
    s = start_sim(logs, model="busy-model", ttft_ms=60_000, max_concurrency=1)
    yield s
    s.proc.stop()


async def test_poller_reads_a_real_engines_queue(busy_sim: Sim) -> None:
    board = LoadBoard(stale_after_s=6)
    poller = DirectLoadPoller(board, lambda: [upstream_of(busy_sim)], interval_s=2.0)
    body = {"model": busy_sim.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {busy_sim.api_key}"}) as client:
        calls = [
            asyncio.create_task(client.post(f"{busy_sim.url}/chat/completions", json=body, timeout=120))
            for _ in range(3)
        ]
        try:
            load = await poll_until(poller, "direct/0", lambda load: load["waiting"] == 2)
            assert load == EngineLoad(running=1, waiting=2, kv_cache=1.0, generated_tokens=0.0)
            sample = board.fresh("direct/0")
            assert sample is not None
            assert sample.pressure == 2 + KV_FULL_PENALTY
        finally:
            for call in calls:
                call.cancel()
            await asyncio.gather(*calls, return_exceptions=True)
            await poller.close()
    # The client went away: the engine lets the requests go.
    poller = DirectLoadPoller(board, lambda: [upstream_of(busy_sim)])
    await poll_until(poller, "direct/0", lambda load: load["running"] == 0 and load["waiting"] == 0)
    await poller.close()


async def test_poller_sees_the_generated_token_counter_move(sim: Sim) -> None:
    board = LoadBoard()
    poller = DirectLoadPoller(board, lambda: [upstream_of(sim)])
    await poller.poll_once()
    before = board.get("direct/0")
    assert before is not None
    assert before["generated_tokens"] is not None
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {sim.api_key}"}) as client:
        reply = await client.post(
            f"{sim.url}/completions", json={"model": sim.model, "prompt": "count", "max_tokens": 5}
        )
        assert reply.status_code == 200
    await poller.poll_once()
    after = board.get("direct/0")
    assert after is not None
    assert after["generated_tokens"] is not None
    assert after["generated_tokens"] >= before["generated_tokens"] + 5
    await poller.close()


async def test_an_unreachable_engine_keeps_its_old_sample_to_go_stale() -> None:
    board = LoadBoard(stale_after_s=6)
    gone = Upstream(name="direct/gone", cluster="direct", base_url=f"http://127.0.0.1:{free_port()}/v1")
    bad = Upstream(name="direct/bad", cluster="direct", base_url="not a url")
    board.update("direct/gone", engine(waiting=4), now=100.0)
    poller = DirectLoadPoller(board, lambda: [gone, bad])
    await poller.poll_once()  # no exception
    sample = board.samples["direct/gone"]
    assert sample.at == 100.0
    assert sample.load == engine(waiting=4)
    assert board.fresh("direct/gone", now=106.0) is None
    assert "direct/bad" not in board.samples
    await poller.close()


async def test_poller_sends_the_key_and_reads_metrics_beside_v1() -> None:
    page = "vllm:num_requests_running 3\nvllm:num_requests_waiting 1\nvllm:kv_cache_usage_perc 0.25\n"
    board = LoadBoard()
    async with RecordingUpstream() as keyed, RecordingUpstream() as open_:
        keyed.reply = open_.reply = raw_reply(page.encode(), "text/plain")
        poller = DirectLoadPoller(
            board, lambda: [keyed.upstream("d/keyed"), open_.upstream("d/open", api_key=None)]
        )
        await poller.poll_once()
        await poller.poll_once()
        await poller.close()
    assert [(s.method, s.path) for s in keyed.seen] == [("GET", "/metrics")] * 2
    assert all(s.headers["Authorization"] == "Bearer up-key" for s in keyed.seen)
    assert "Authorization" not in open_.seen[0].headers
    assert board.get("d/keyed") == EngineLoad(running=3, waiting=1, kv_cache=0.25, generated_tokens=None)
    assert board.get("d/open") == board.get("d/keyed")


@pytest.mark.parametrize(
    "reply",
    [
        raw_reply(b"vllm:num_requests_running 1\n", "text/plain", status=404),
        raw_reply(b"# not an inference engine\nprocess_cpu_seconds_total 4\n", "text/plain"),
    ],
)
async def test_a_page_without_engine_load_changes_nothing(reply: Any) -> None:
    board = LoadBoard()
    async with RecordingUpstream() as up:
        up.reply = reply
        poller = DirectLoadPoller(board, lambda: [up.upstream("d/0")])
        await poller.poll_once()
        await poller.close()
    assert len(up.seen) == 1
    assert board.get("d/0") is None


async def test_a_slow_engine_does_not_hold_up_the_others(sim: Sim) -> None:
    board = LoadBoard()
    async with RecordingUpstream() as slow:
        slow.reply = slow.slow_reply(30, raw_reply(b"vllm:num_requests_running 1\n", "text/plain"))
        poller = DirectLoadPoller(
            board, lambda: [slow.upstream("d/slow"), upstream_of(sim, "d/sim")], interval_s=2.0, timeout_s=0.5
        )
        await poller.poll_once()  # returns after the short timeout, not the slow answer
        await poller.close()
    assert board.get("d/slow") is None
    assert board.get("d/sim") is not None


async def test_the_poll_loop_survives_errors() -> None:
    calls = 0
    twice = asyncio.Event()

    def upstreams() -> list[Upstream]:
        nonlocal calls
        calls += 1
        if calls >= 3:
            twice.set()
        raise RuntimeError("the list of upstreams broke")

    poller = DirectLoadPoller(LoadBoard(), upstreams, interval_s=0.01)
    task = asyncio.create_task(poller.run())
    await asyncio.wait_for(twice.wait(), 10)
    assert not task.done()  # still polling after the errors
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await poller.close()


# --- load reported by a site ----------------------------------------------------------------


class SiteAnswers:
    """The Globus Compute hop (the one allowed stand-in): answers the `status` function with
    what the site's function returns, as the cloud service would hand it back."""

    def __init__(self, workers: list[dict[str, Any]]) -> None:
        self.workers = workers

    async def call(self, function: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        assert function == "status"
        return {"version": FUNCTIONS_VERSION, "workers": self.workers, "models": []}

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


def worker(worker_id: str, state: str = "ready", load: object = None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "worker_id": worker_id, "model": "m", "state": state, "base_url": f"http://node:8000/{worker_id}/v1",
    }  # fmt: skip
    if load is not None:
        entry["load"] = load
    return entry


async def test_site_reported_load_goes_to_the_board() -> None:
    board = LoadBoard(stale_after_s=6)
    answers = SiteAnswers(
        [
            worker("w1", load={"running": 2, "waiting": 5, "kv_cache": 0.4, "generated_tokens": 10.0}),
            worker("w2"),  # READY, no load reported (an older site)
            worker("w3", state="starting", load={"running": 0, "waiting": 0}),
        ]
    )
    relay = ComputeRelay(answers, LocalStreamBridge(), "http://127.0.0.1:1")
    site = SiteDirectory("hpc", relay, board=board, load_max_age_s=90)
    ready = await site.ready_workers()
    assert [s.upstream.name for s in ready] == ["hpc/w1", "hpc/w2"]
    assert board.get("hpc/w1") == EngineLoad(running=2, waiting=5, kv_cache=0.4, generated_tokens=10.0)
    sample = board.samples["hpc/w1"]
    assert sample.fresh_until == pytest.approx(sample.at + 90)  # fresh until after the next refresh
    assert set(board.samples) == {"hpc/w1"}
    board.update("other/w1", engine())
    answers.workers = [worker("w2", load={"running": 0, "waiting": 0})]  # w1 went away
    await site.ready_workers()
    assert set(board.samples) == {"hpc/w2", "other/w1"}
