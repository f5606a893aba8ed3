"""Real gateway and sim-engine processes for integration tests."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import yaml

from tests.support.procs import ServerProcess, free_port, python_argv


@dataclass
class Sim:
    url: str  # base URL ending in /v1
    api_key: str
    model: str
    proc: ServerProcess

    @property
    def root(self) -> str:
        return self.url.removesuffix("/v1")


def start_sim(
    log_dir: Path,
    *,
    model: str = "sim-model",
    ttft_ms: float = 0,
    itl_ms: float = 0,
    max_concurrency: int = 64,
    fail_status: int | None = None,
    port: int | None = None,
) -> Sim:
    key = secrets.token_urlsafe(16)

    def make(port: int) -> ServerProcess:
        argv = python_argv(
            "-m", "endpoints.engines.sim", "--port", str(port), "--model", model,
            "--ttft-ms", str(ttft_ms), "--itl-ms", str(itl_ms),
            "--max-concurrency", str(max_concurrency), f"--api-key={key}",
        )  # fmt: skip
        if fail_status is not None:
            argv += ["--fail-status", str(fail_status)]
        return ServerProcess(argv, f"http://127.0.0.1:{port}/health", log_dir / f"sim-{model}-{port}.log")

    port, proc = start_on_free_port(make, port)
    return Sim(f"http://127.0.0.1:{port}/v1", key, model, proc)


def start_on_free_port(
    make: Callable[[int], ServerProcess], port: int | None = None, attempts: int = 4
) -> tuple[int, ServerProcess]:
    """Start the server `make(port)` builds, on another port if another test took this one."""
    for attempt in range(attempts):
        chosen = port if port is not None and attempt == 0 else free_port()
        proc = make(chosen)
        try:
            proc.start()
        except RuntimeError as exc:
            if "address already in use" not in str(exc).lower() or attempt == attempts - 1:
                raise
            continue
        return chosen, proc
    raise AssertionError("unreachable")


def upstream(sim: Sim, name: str | None = None, **extra: Any) -> dict[str, Any]:
    """The config entry of a sim engine as an upstream."""
    entry: dict[str, Any] = {"url": sim.url, "api_key": sim.api_key, **extra}
    if name:
        entry["name"] = name
    return entry


@dataclass
class Gateway:
    url: str  # base URL ending in /v1
    api_key: str
    config: dict[str, Any]
    proc: ServerProcess

    @property
    def root(self) -> str:
        return self.url.removesuffix("/v1")

    def client(self, **kwargs: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url, api_key=self.api_key, max_retries=0, **kwargs)

    def async_client(self, **kwargs: Any) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.url, api_key=self.api_key, max_retries=0, **kwargs)

    def stop(self) -> None:
        self.proc.stop()


def start_gateway(
    log_dir: Path,
    *,
    clusters: dict[str, Any],
    store_url: str,
    models: dict[str, Any] | None = None,
    extra_keys: list[dict[str, Any]] | None = None,
    env: dict[str, str] | None = None,
    **sections: Any,
) -> Gateway:
    key = "sk-test-" + secrets.token_urlsafe(16)
    server = sections.pop("server", {})
    store = sections.pop("store", {})
    auth = sections.pop("auth", {})
    config: dict[str, Any] = {}

    def make(port: int) -> ServerProcess:
        config.clear()
        config.update({
            "server": {"host": "127.0.0.1", "port": port, **server},
            "store": {"url": store_url, "usage_flush_interval_s": 0.05, **store},
            "auth": {
                "api_keys": [{"owner": "tester", "key": key, "admin": True}, *(extra_keys or [])],
                **auth,
            },
            "clusters": clusters,
            **({"models": models} if models else {}),
            **sections,
        })  # fmt: skip
        path = log_dir / f"hearth-{port}.yaml"
        path.write_text(yaml.safe_dump(config))
        return ServerProcess(
            python_argv("-m", "gateway.cli", "serve", "--config", str(path)),
            f"http://127.0.0.1:{port}/ready",
            log_dir / f"gateway-{port}.log",
            env=env,
        )

    port, proc = start_on_free_port(make)
    return Gateway(f"http://127.0.0.1:{port}/v1", key, config, proc)


def interrupted_stream(
    gw: Gateway,
    body: dict[str, Any],
    interrupt: Callable[[], None] | None,
    *,
    after: int = 6,
    timeout: float = 60,
) -> list[str]:
    """POST a streaming completion, read `after` lines, then `interrupt()` (kill something) and
    return the rest of the stream's non-empty lines; with no `interrupt`, leave (disconnect)."""
    headers = {"Authorization": f"Bearer {gw.api_key}"}
    with (
        httpx.Client(timeout=timeout) as client,
        client.stream("POST", f"{gw.url}/completions", json=body, headers=headers) as resp,
    ):
        lines = resp.iter_lines()
        for _ in range(after):
            next(lines)
        if interrupt is None:
            return []
        interrupt()
        return [line for line in lines if line]


def assert_ends_with_error_event(rest: list[str]) -> None:
    """A stream that broke after its first byte: an OpenAI error event, then [DONE]."""
    assert rest[-1] == "data: [DONE]"
    assert rest[-2].startswith('data: {"error":')
    assert "incomplete" in rest[-2]


def sim_metric(sim: Sim, name: str) -> float:
    """One value from the sim engine's /metrics (the first series of `name`)."""
    text = httpx.get(f"{sim.root}/metrics").text
    m = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M)
    assert m, f"{name} not in sim metrics"
    return float(m.group(1))


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll `predicate` until it holds (True) or `timeout` passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False
