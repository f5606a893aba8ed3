"""Gateways built from several source trees, in front of one engine, measured in one run.

    git worktree add /tmp/before <commit>
    python -m benchmarks.compare /tmp/before . [--rounds 4] [--duration 5] [--json out.json]

Each round runs a 64-client closed loop against the engine alone, then against each tree's
gateway (`hearth serve`, default settings), back to back, so that the shared machine's drift
affects all alike. Reports each gateway's throughput as a share of the engine's in the same
round, and its CPU time per request (read from /proc, user + system), with medians: a change
that saves the gateway CPU shows in the second figure even when the ratio is within noise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.harness import Target, closed_loop, print_table, sim_engine, timed_post
from benchmarks.overhead import CHAT
from endpoints.launcher import LocalProcess, free_port


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pid(proc: LocalProcess) -> int:
    assert proc.proc is not None
    return proc.proc.pid


def start_gateway(tree: str, upstream: Target, data_dir: str) -> tuple[LocalProcess, Target]:
    port = free_port()
    config = Path(data_dir) / f"hearth-{port}.yaml"
    cluster = {"relay": "direct", "upstreams": [{"url": upstream.base_url, "api_key": upstream.api_key}]}
    config.write_text(
        json.dumps({"store": {"url": f"sqlite:///{data_dir}/b-{port}.db"}, "clusters": {"bench": cluster}})
    )
    boot = f"import sys; sys.path.insert(0, {tree!r}); from gateway.cli import main; main()"
    argv = [sys.executable, "-c", boot, "serve", "--config", str(config),
            "--api-key", "bench-client-key", "--port", str(port)]  # fmt: skip
    proc = LocalProcess(argv, f"http://127.0.0.1:{port}/ready", quiet=True)
    proc.start(timeout_s=120)
    return proc, Target(tree, f"http://127.0.0.1:{port}/v1", "bench-client-key")


async def measure(
    direct: Target, gateways: list[tuple[int, Target]], rounds: int, duration: float
) -> dict[str, Any]:
    runs: dict[str, list[dict[str, float]]] = {t.name: [] for _, t in gateways}
    base: list[float] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        for t in [direct, *(t for _, t in gateways)]:
            for _ in range(200):
                await timed_post(session, t, "chat/completions", CHAT)

        def chat(t: Target) -> Callable[[], Awaitable[float]]:
            return lambda: timed_post(session, t, "chat/completions", CHAT)

        for _ in range(rounds):
            base.append((await closed_loop(chat(direct), 64, duration))["rps"])
            for pid, t in gateways:
                before = cpu_seconds(pid)
                out = await closed_loop(chat(t), 64, duration)
                cpu_us = (cpu_seconds(pid) - before) / out["requests"] * 1e6
                runs[t.name].append({"rps": out["rps"], "ratio": out["rps"] / base[-1], "cpu_us": cpu_us})
    return {"direct_rps": base, "gateways": runs}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("trees", nargs="+", help="source trees (checkouts) whose gateways to compare")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per closed loop")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    trees = [str(Path(t).resolve()) for t in args.trees]
    with tempfile.TemporaryDirectory() as data_dir, sim_engine(ttft_ms=0, itl_ms=0) as direct:
        started = [start_gateway(tree, direct, data_dir) for tree in trees]
        try:
            gateways = [(_pid(proc), target) for proc, target in started]
            result = asyncio.run(measure(direct, gateways, args.rounds, args.duration))
        finally:
            for proc, _ in started:
                proc.stop()
    rows = []
    for tree, runs in result["gateways"].items():
        rows.append((
            tree,
            " ".join(f"{r['ratio']:.0%}" for r in runs),
            f"{statistics.median(r['ratio'] for r in runs):.1%}",
            " ".join(f"{r['cpu_us']:.0f}" for r in runs),
            f"{statistics.median(r['cpu_us'] for r in runs):.0f}",
        ))  # fmt: skip
    direct_rps = " ".join(f"{x:.0f}" for x in result["direct_rps"])
    print_table(
        f"Gateways against the engine alone (direct req/s per round: {direct_rps})",
        rows,
        ("tree", "gateway / direct", "median", "gateway CPU µs / request", "median"),
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
