"""What the gateway adds on top of the engine, measured against the engine itself in one run.

    python -m benchmarks.overhead [--requests 1000] [--duration 10] [--json out.json]

Starts the sim engine (no artificial delays, so the gateway's own cost is what shows), then a
real gateway (`hearth serve --upstream`, its defaults: SQLite usage store, access log on) in
front of it, and measures from a separate process:

- sequential non-streaming latency, direct vs through the gateway (added p50/p99);
- sequential streaming time to first token, direct vs gateway (added p50/p99);
- throughput with 64 concurrent closed-loop clients, direct vs gateway (ratio).

Direct and gateway samples are interleaved so drift affects both alike. Load generator,
gateway and engine share the machine's cores, as the targets in docs/performance.md assume.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
from typing import Any

import aiohttp
import orjson

from benchmarks.harness import (
    Target,
    closed_loop,
    gateway,
    print_table,
    sim_engine,
    summary_ms,
    time_to_first_token,
    timed_post,
)

CHAT = orjson.dumps(
    {"model": "sim-model", "messages": [{"role": "user", "content": "Say hello to Hearth"}], "max_tokens": 16}
)
STREAM = orjson.dumps(
    {
        "model": "sim-model",
        "messages": [{"role": "user", "content": "Say hello to Hearth"}],
        "max_tokens": 16,
        "stream": True,
    }
)


async def measure(
    direct: Target, gw: Target, requests: int, duration: float, concurrency: int
) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        for t in (direct, gw):  # warm up connections, caches and the key cache
            for _ in range(50):
                await timed_post(session, t, "chat/completions", CHAT)
                await time_to_first_token(session, t, "chat/completions", STREAM)
        lat: dict[str, list[float]] = {"direct": [], "gateway": []}
        ttft: dict[str, list[float]] = {"direct": [], "gateway": []}
        for _ in range(requests):
            for t in (direct, gw):
                lat[t.name].append(await timed_post(session, t, "chat/completions", CHAT))
        for _ in range(requests):
            for t in (direct, gw):
                ttft[t.name].append(await time_to_first_token(session, t, "chat/completions", STREAM))
        tput = await _closed_loops(session, direct, gw, duration, concurrency)
    lat_s = {k: summary_ms(v) for k, v in lat.items()}
    ttft_s = {k: summary_ms(v) for k, v in ttft.items()}
    return {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "params": {
            "requests": requests,
            "duration_s": duration,
            "concurrency": concurrency,
            "max_tokens": 16,
        },
        "latency": lat_s,
        "ttft": ttft_s,
        "throughput": tput,
        "added": {
            "latency_p50_ms": lat_s["gateway"]["p50_ms"] - lat_s["direct"]["p50_ms"],
            "latency_p99_ms": lat_s["gateway"]["p99_ms"] - lat_s["direct"]["p99_ms"],
            "ttft_p50_ms": ttft_s["gateway"]["p50_ms"] - ttft_s["direct"]["p50_ms"],
            "ttft_p99_ms": ttft_s["gateway"]["p99_ms"] - ttft_s["direct"]["p99_ms"],
            "throughput_ratio": tput["gateway"]["rps"] / tput["direct"]["rps"],
        },
    }


async def _closed_loops(
    session: aiohttp.ClientSession, direct: Target, gw: Target, duration: float, concurrency: int
) -> dict[str, dict[str, float]]:
    """Closed-loop throughput of each target, twice each alternating; the better run of each."""
    best: dict[str, dict[str, float]] = {}
    for t in (direct, gw, direct, gw):
        result = await closed_loop(
            lambda t=t: timed_post(session, t, "chat/completions", CHAT), concurrency, duration
        )
        if t.name not in best or result["rps"] > best[t.name]["rps"]:
            best[t.name] = result
    return best


async def throughput(direct: Target, gw: Target, duration: float, concurrency: int) -> dict[str, Any]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        for t in (direct, gw):
            for _ in range(50):
                await timed_post(session, t, "chat/completions", CHAT)
        best = await _closed_loops(session, direct, gw, duration, concurrency)
    return {**best, "ratio": best["gateway"]["rps"] / best["direct"]["rps"]}


def report(r: dict[str, Any]) -> None:
    a, lat, ttft, tp = r["added"], r["latency"], r["ttft"], r["throughput"]
    rows = [
        (
            "non-stream latency p50 (ms)",
            f"{lat['direct']['p50_ms']:.3f}",
            f"{lat['gateway']['p50_ms']:.3f}",
            f"+{a['latency_p50_ms']:.3f}",
            "<= +1 ms",
        ),
        (
            "non-stream latency p99 (ms)",
            f"{lat['direct']['p99_ms']:.3f}",
            f"{lat['gateway']['p99_ms']:.3f}",
            f"+{a['latency_p99_ms']:.3f}",
            "<= +3 ms",
        ),
        (
            "stream TTFT p50 (ms)",
            f"{ttft['direct']['p50_ms']:.3f}",
            f"{ttft['gateway']['p50_ms']:.3f}",
            f"+{a['ttft_p50_ms']:.3f}",
            "<= +2 ms",
        ),
        (
            "stream TTFT p99 (ms)",
            f"{ttft['direct']['p99_ms']:.3f}",
            f"{ttft['gateway']['p99_ms']:.3f}",
            f"+{a['ttft_p99_ms']:.3f}",
            "",
        ),
        (
            f"throughput @{r['params']['concurrency']} (req/s)",
            f"{tp['direct']['rps']:.0f}",
            f"{tp['gateway']['rps']:.0f}",
            f"{a['throughput_ratio']:.0%} of direct",
            ">= 50%",
        ),
    ]
    print_table(
        "Hearth gateway overhead (sim engine, no delays)",
        rows,
        ("measure", "direct", "gateway", "gateway vs direct", "target"),
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=1000, help="sequential requests per target and mode")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per throughput run")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--paced", default="10,1", help="TTFT,ITL in ms of the paced engine for the second throughput run"
    )
    parser.add_argument("--json", help="write the results here as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, sim_engine() as direct, gateway(direct, data_dir=tmp) as gw:
        results = asyncio.run(measure(direct, gw, args.requests, args.duration, args.concurrency))
    report(results)
    ttft_ms, itl_ms = (float(x) for x in args.paced.split(","))
    with (
        tempfile.TemporaryDirectory() as tmp,
        sim_engine(ttft_ms=ttft_ms, itl_ms=itl_ms) as direct,
        gateway(direct, data_dir=tmp) as gw,
    ):
        paced = asyncio.run(throughput(direct, gw, args.duration, args.concurrency))
    results["paced_engine"] = {"ttft_ms": ttft_ms, "itl_ms": itl_ms, **paced}
    print_table(
        f"Throughput @{args.concurrency}, engine with TTFT {ttft_ms:g} ms and ITL {itl_ms:g} ms",
        [(f"{paced['direct']['rps']:.0f}", f"{paced['gateway']['rps']:.0f}", f"{paced['ratio']:.0%}")],
        ("direct req/s", "gateway req/s", "gateway vs direct"),
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
