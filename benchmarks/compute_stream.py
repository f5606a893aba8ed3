"""What the Globus Compute relay adds to a stream, against the direct relay, in one run.

    python -m benchmarks.compute_stream [--streams 40] [--tokens 32] [--itl-ms 10]

The simulated engine stamps each write with the time it was sent (`--stamp-events`: an SSE
comment ``: sent=<unix time>``, which OpenAI clients ignore and the gateway passes on). The
client, on the same host, subtracts the stamp from the time the chunk arrives: that is the
chunk's latency from the engine to the client. Measured through a gateway with the direct
relay and through a gateway with the compute relay (Globus Compute's engine in the gateway,
Parsl local workers; the site function forwards events over the callback channel), so the
difference is what the compute path adds per chunk, and at the first token.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from typing import Any

import aiohttp
import orjson

from benchmarks.harness import Target, gateway, print_table, sim_engine, summary_ms


async def one_stream(
    session: aiohttp.ClientSession, target: Target, body: bytes
) -> tuple[float, list[float]]:
    """(time to first token, latency of each stamped chunk), in seconds."""
    t0 = time.perf_counter()
    ttft: float | None = None
    latencies: list[float] = []
    async with session.post(f"{target.base_url}/completions", data=body, headers=target.headers) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{target.name}: HTTP {resp.status}: {await resp.text()}")
        async for line in resp.content:
            now = time.time()
            if line.startswith(b": sent="):
                latencies.append(now - float(line[7:].strip()))
            elif ttft is None and line.startswith(b'data: {"id"'):
                ttft = time.perf_counter() - t0
    if ttft is None:
        raise RuntimeError(f"{target.name}: no token in the stream")
    return ttft, latencies


async def measure(targets: list[Target], streams: int, body: bytes) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with aiohttp.ClientSession() as session:
        for t in targets:  # warm up (the compute path's first task starts its worker)
            for _ in range(5):
                await one_stream(session, t, body)
        ttfts: dict[str, list[float]] = {t.name: [] for t in targets}
        chunks: dict[str, list[float]] = {t.name: [] for t in targets}
        for _ in range(streams):
            for t in targets:
                ttft, lat = await one_stream(session, t, body)
                ttfts[t.name].append(ttft)
                chunks[t.name].extend(lat)
    for name in ttfts:
        out[name] = {"ttft": summary_ms(ttfts[name]), "chunk_latency": summary_ms(chunks[name])}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=40, help="streams per relay")
    parser.add_argument("--tokens", type=int, default=32, help="tokens per stream")
    parser.add_argument("--itl-ms", type=float, default=10.0, help="the engine's time between tokens")
    parser.add_argument("--json", help="write the results here as JSON")
    args = parser.parse_args()
    body = orjson.dumps({"model": "sim-model", "prompt": "hello", "max_tokens": args.tokens, "stream": True})
    with (
        tempfile.TemporaryDirectory() as tmp,
        sim_engine(itl_ms=args.itl_ms, extra=["--stamp-events"]) as engine,
        gateway(engine, data_dir=tmp) as direct,
        gateway(engine, data_dir=tmp, relay="compute") as compute,
    ):
        direct = Target("direct relay", direct.base_url, direct.api_key)
        compute = Target("compute relay", compute.base_url, compute.api_key)
        results = asyncio.run(measure([direct, compute], args.streams, body))
    d, c = results["direct relay"], results["compute relay"]
    rows = [
        (label, f"{d[k][q]:.3f}", f"{c[k][q]:.3f}", f"+{c[k][q] - d[k][q]:.3f}")
        for label, k, q in (
            ("chunk latency p50 (ms)", "chunk_latency", "p50_ms"),
            ("chunk latency p99 (ms)", "chunk_latency", "p99_ms"),
            ("chunk latency mean (ms)", "chunk_latency", "mean_ms"),
            ("time to first token p50 (ms)", "ttft", "p50_ms"),
            ("time to first token p99 (ms)", "ttft", "p99_ms"),
        )
    ]
    print_table(
        f"Streams through the gateway, direct vs Globus Compute relay ({args.streams} x {args.tokens} tok)",
        rows,
        ("measure", "direct relay", "compute relay", "added by compute"),
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
