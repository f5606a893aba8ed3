"""Batch throughput: lines per second for an N-line batch through the gateway's Batch API,
against the same lines sent straight to the engine with the same concurrency, in one run.

    .venv/bin/python -m benchmarks.batch [--lines 10000] [--concurrency 16] [--ttft-ms 20] [--itl-ms 1]

The gateway's figure runs from creating the batch to its `completed` status: validation,
every line through the dispatcher, checkpoints, and writing the output file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.harness import Target, print_table, sim_engine
from endpoints.launcher import LocalProcess, free_port


def _lines(model: str, n: int, max_tokens: int) -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"line-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": model,
                "messages": [{"role": "user", "content": f"prompt {i}"}],
                "max_tokens": max_tokens,
            },
        }
        for i in range(n)
    ]


async def direct(engine: Target, lines: list[dict[str, Any]], concurrency: int) -> float:
    """Seconds to send every line's body to the engine, `concurrency` at a time."""
    queue = iter(lines)
    async with aiohttp.ClientSession(headers=engine.headers) as session:

        async def worker() -> None:
            for line in queue:
                async with session.post(f"{engine.base_url}/chat/completions", json=line["body"]) as r:
                    await r.read()
                    assert r.status == 200, r.status

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - t0


async def through_gateway(gw: Target, lines: list[dict[str, Any]]) -> tuple[float, dict[str, Any]]:
    """Seconds from creating the batch to `completed`, and the final batch object."""
    payload = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {gw.api_key}"}) as session:
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field("file", payload, filename="bench.jsonl", content_type="application/jsonl")
        async with session.post(f"{gw.base_url}/files", data=form) as r:
            file_id = (await r.json())["id"]
        body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
        t0 = time.perf_counter()
        async with session.post(f"{gw.base_url}/batches", json=body) as r:
            batch = await r.json()
        while batch["status"] not in ("completed", "failed", "expired", "cancelled"):
            await asyncio.sleep(0.05)
            async with session.get(f"{gw.base_url}/batches/{batch['id']}") as r:
                batch = await r.json()
        return time.perf_counter() - t0, batch


def run_gateway(engine: Target, data_dir: str, concurrency: int) -> tuple[LocalProcess, Target]:
    port = free_port()
    config = Path(data_dir) / "hearth.yaml"
    config.write_text(json.dumps({
        "store": {"url": f"sqlite:///{data_dir}/bench.db"},
        "server": {"access_log": False},
        "batch": {"files_dir": f"{data_dir}/files", "line_concurrency": concurrency,
                  "max_concurrent_lines": concurrency},
        "clusters": {"bench": {"upstreams": [{"url": engine.base_url, "api_key": engine.api_key}]}},
    }))  # fmt: skip
    argv = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config),
            "--api-key", "bench-client-key", "--port", str(port)]  # fmt: skip
    proc = LocalProcess(argv, f"http://127.0.0.1:{port}/ready", quiet=True)
    proc.start(timeout_s=120)
    return proc, Target("gateway", f"http://127.0.0.1:{port}/v1", "bench-client-key")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--ttft-ms", type=float, default=20.0)
    parser.add_argument("--itl-ms", type=float, default=1.0)
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()
    with sim_engine(ttft_ms=args.ttft_ms, itl_ms=args.itl_ms) as engine, tempfile.TemporaryDirectory() as tmp:
        lines = _lines("sim-model", args.lines, args.max_tokens)
        direct_s = asyncio.run(direct(engine, lines, args.concurrency))
        proc, gw = run_gateway(engine, tmp, args.concurrency)
        try:
            gateway_s, batch = asyncio.run(through_gateway(gw, lines))
        finally:
            proc.stop()
    counts = batch["request_counts"]
    if batch["status"] != "completed" or counts["completed"] != args.lines:
        raise SystemExit(f"the batch did not complete every line: {batch}")
    d, g = args.lines / direct_s, args.lines / gateway_s
    print_table(
        f"{args.lines} lines, {args.concurrency} at a time, sim TTFT {args.ttft_ms} ms ITL {args.itl_ms} ms",
        [
            ("direct to the engine", f"{direct_s:.1f}", f"{d:.0f}", "100%"),
            ("Batch API through the gateway", f"{gateway_s:.1f}", f"{g:.0f}", f"{100 * g / d:.0f}%"),
        ],
        ("path", "seconds", "lines/s", "of direct"),
    )


if __name__ == "__main__":
    main()
