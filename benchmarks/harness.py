"""Shared pieces of the benchmarks: real servers as child processes, a load generator,
percentiles and a results table. Everything runs on loopback in one run, so numbers are
compared against a baseline measured on the same machine at the same time."""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from rich.console import Console
from rich.table import Table

from endpoints.launcher import LocalProcess, free_port, sim_argv


@dataclass(frozen=True)
class Target:
    name: str
    base_url: str  # ends in /v1
    api_key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"}


@contextmanager
def sim_engine(
    model: str = "sim-model",
    *,
    ttft_ms: float = 0,
    itl_ms: float = 0,
    max_concurrency: int = 1024,
    extra: Sequence[str] = (),
) -> Iterator[Target]:
    port = free_port()
    key = "bench-worker-key"
    proc = LocalProcess(
        sim_argv(
            model=model,
            port=port,
            api_key=key,
            ttft_ms=ttft_ms,
            itl_ms=itl_ms,
            max_concurrency=max_concurrency,
            extra=extra,
        ),
        f"http://127.0.0.1:{port}/health",
        quiet=True,
    )
    proc.start()
    try:
        yield Target("direct", f"http://127.0.0.1:{port}/v1", key)
    finally:
        proc.stop()


@contextmanager
def gateway(upstream: Target, *, data_dir: str, relay: str = "direct") -> Iterator[Target]:
    """A gateway (`hearth serve`, default settings) in front of `upstream`, reached through
    `relay`: "direct", or "compute" (Globus Compute's engine in the gateway, local workers)."""
    port = free_port()
    key = "bench-client-key"
    cluster: dict[str, object] = {
        "relay": relay,
        "upstreams": [{"url": upstream.base_url, "api_key": upstream.api_key}],
    }
    if relay == "compute":
        cluster["compute"] = {"mode": "local", "provider": "local", "run_dir": f"{data_dir}/compute"}
    config = Path(data_dir) / f"hearth-{port}.yaml"
    config.write_text(
        json.dumps(
            {"store": {"url": f"sqlite:///{data_dir}/bench-{port}.db"}, "clusters": {"bench": cluster}}
        )
    )  # JSON is YAML
    argv = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config),
            "--api-key", key, "--port", str(port)]  # fmt: skip
    proc = LocalProcess(argv, f"http://127.0.0.1:{port}/ready", quiet=True)
    proc.start(timeout_s=120)
    try:
        yield Target("gateway", f"http://127.0.0.1:{port}/v1", key)
    finally:
        proc.stop()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary_ms(samples_s: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples_s]
    return {
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "mean_ms": statistics.fmean(ms),
        "n": len(ms),
    }


async def timed_post(session: aiohttp.ClientSession, target: Target, path: str, body: bytes) -> float:
    t0 = time.perf_counter()
    async with session.post(f"{target.base_url}/{path}", data=body, headers=target.headers) as resp:
        await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{target.name}: HTTP {resp.status}")
    return time.perf_counter() - t0


async def time_to_first_token(
    session: aiohttp.ClientSession, target: Target, path: str, body: bytes
) -> float:
    """Seconds from sending a streaming request to the first event carrying text."""
    t0 = time.perf_counter()
    ttft = None
    async with session.post(f"{target.base_url}/{path}", data=body, headers=target.headers) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{target.name}: HTTP {resp.status}")
        async for line in resp.content:
            if (
                ttft is None
                and line.startswith(b"data: {")
                and (b'"content":"' in line or b'"text":"' in line)
            ) and b'"content":""' not in line:
                ttft = time.perf_counter() - t0
    if ttft is None:
        raise RuntimeError(f"{target.name}: no token in the stream")
    return ttft


async def closed_loop(
    work: Callable[[], Awaitable[float]], concurrency: int, duration_s: float
) -> dict[str, float]:
    """`concurrency` workers issue requests back to back for `duration_s`; requests per second."""
    done = 0
    latencies: list[float] = []
    deadline = time.perf_counter() + duration_s

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            latencies.append(await work())
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    return {
        "rps": done / elapsed,
        "requests": done,
        **{k: v for k, v in summary_ms(latencies).items() if k != "n"},
    }


def print_table(title: str, rows: list[tuple[str, ...]], header: tuple[str, ...]) -> None:
    table = Table(*header, title=title)
    for row in rows:
        table.add_row(*row)
    Console().print(table)
