"""Real gateway and sim-engine processes for integration tests."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    port = port or free_port()
    key = secrets.token_urlsafe(16)
    argv = python_argv(
        "-m", "endpoints.engines.sim", "--port", str(port), "--model", model,
        "--ttft-ms", str(ttft_ms), "--itl-ms", str(itl_ms),
        "--max-concurrency", str(max_concurrency), f"--api-key={key}",
    )  # fmt: skip
    if fail_status is not None:
        argv += ["--fail-status", str(fail_status)]
    proc = ServerProcess(argv, f"http://127.0.0.1:{port}/health", log_dir / f"sim-{model}-{port}.log")
    proc.start()
    return Sim(f"http://127.0.0.1:{port}/v1", key, model, proc)


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
    port = free_port()
    key = "sk-test-" + secrets.token_urlsafe(16)
    config: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": port, **sections.pop("server", {})},
        "store": {"url": store_url, "usage_flush_interval_s": 0.05, **sections.pop("store", {})},
        "auth": {"api_keys": [{"owner": "tester", "key": key, "admin": True}, *(extra_keys or [])]},
        "clusters": clusters,
        **({"models": models} if models else {}),
        **sections,
    }
    path = log_dir / f"hearth-{port}.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = ServerProcess(
        python_argv("-m", "gateway.cli", "serve", "--config", str(path)),
        f"http://127.0.0.1:{port}/ready",
        log_dir / f"gateway-{port}.log",
        env=env,
    )
    proc.start()
    return Gateway(f"http://127.0.0.1:{port}/v1", key, config, proc)
