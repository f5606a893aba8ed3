"""Which HTTP client should the relay use? Each one sends the same requests to the sim engine.

    python -m benchmarks.clients [--requests 2000] [--concurrency 64]

For aiohttp, httpx and Hearth's own HTTP/1.1 client (`gateway.relay.http1`), all keep-alive
and HTTP/1.1, it reports requests per second at the given concurrency and the client's own
CPU time per request (process CPU time / requests), which is what the relay pays on the
gateway's cores. The engine runs in another process; its cost is the same for all three.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import httpx
import orjson
import uvloop

from benchmarks.harness import Target, print_table, sim_engine
from gateway.relay.http1 import ConnectionPool, Origin

BODY = orjson.dumps({"model": "sim-model", "prompt": "hello", "max_tokens": 16})


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


async def _drive(send: Callable[[], Awaitable[None]], requests: int, concurrency: int) -> dict[str, float]:
    for _ in range(100):  # warm up
        await send()
    left = requests

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await send()

    cpu0, t0 = _cpu(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - t0, _cpu() - cpu0
    return {"rps": requests / wall, "cpu_us_per_request": cpu / requests * 1e6}


async def bench_aiohttp(t: Target, n: int, c: int) -> dict[str, float]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:

        async def send() -> None:
            async with s.post(f"{t.base_url}/completions", data=BODY, headers=t.headers) as r:
                await r.read()

        return await _drive(send, n, c)


async def bench_httpx(t: Target, n: int, c: int) -> dict[str, float]:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(limits=limits, timeout=30) as s:

        async def send() -> None:
            r = await s.post(f"{t.base_url}/completions", content=BODY, headers=t.headers)
            r.read()

        return await _drive(send, n, c)


async def bench_http1(t: Target, n: int, c: int) -> dict[str, float]:
    pool = ConnectionPool()
    origin, path = Origin.of(t.base_url)
    try:

        async def send() -> None:
            r = await pool.request("POST", origin, f"{path}/completions", t.headers, BODY, read_timeout=30)
            await r.read()
            r.release()

        return await _drive(send, n, c)
    finally:
        await pool.close()


CLIENTS: dict[str, Callable[[Target, int, int], Awaitable[dict[str, float]]]] = {
    "aiohttp": bench_aiohttp,
    "httpx": bench_httpx,
    "hearth http1": bench_http1,
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--json", help="write the results here as JSON")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with sim_engine() as engine:
        for name, bench in CLIENTS.items():
            # uvloop, as the gateway runs under uvicorn
            results[name] = uvloop.run(bench(engine, args.requests, args.concurrency))
    base = results["aiohttp"]["cpu_us_per_request"]
    rows = [
        (name, f"{r['rps']:.0f}", f"{r['cpu_us_per_request']:.0f}", f"{r['cpu_us_per_request'] / base:.2f}")
        for name, r in results.items()
    ]
    print_table(
        f"HTTP clients to the sim engine ({args.requests} requests, {args.concurrency} at once)",
        rows,
        ("client", "req/s", "client CPU µs/request", "CPU vs aiohttp"),
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
