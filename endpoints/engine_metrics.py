"""An engine's load, read from its Prometheus metrics (vLLM's names; the sim engine uses them too).

vLLM serves `GET /metrics` in the Prometheus text format
(https://docs.vllm.ai/en/latest/usage/metrics.html): requests running and waiting, KV-cache
usage, and token counters. The router uses the first three to spread load and the generated
token counter to tell an engine that works from one that only answers /health. Shared by the
site functions (which read their workers' metrics) and the gateway (which reads those of
`direct` upstreams), so it imports nothing but the standard library.
"""

from __future__ import annotations

from typing import TypedDict

__all__ = ["EngineLoad", "metrics_url", "parse_engine_load"]

_RUNNING = "vllm:num_requests_running"
_WAITING = "vllm:num_requests_waiting"
_KV_CACHE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")  # new name, old name
_GENERATED = ("vllm:generation_tokens_total", "vllm:generation_tokens")


class EngineLoad(TypedDict):
    running: int  # requests holding a slot
    waiting: int  # requests queued for one
    kv_cache: float | None  # 0..1, None if the engine does not say
    generated_tokens: float | None  # a counter: it moves while the engine does work


def metrics_url(base_url: str) -> str:
    """The engine's /metrics from its OpenAI base URL (…/v1)."""
    root = base_url.rstrip("/")
    return (root[: -len("/v1")] if root.endswith("/v1") else root) + "/metrics"


def parse_engine_load(text: str) -> EngineLoad | None:
    """The load in a /metrics page, summed over label sets (one per model or engine); None when
    the page has no request gauges (not a vLLM-like engine)."""
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name_end = min((i for i in (line.find("{"), line.find(" ")) if i >= 0), default=-1)
        if name_end <= 0:
            continue
        name = line[:name_end]
        if name != _RUNNING and name != _WAITING and name not in _KV_CACHE and name not in _GENERATED:
            continue
        rest = line[line.rindex("}") + 1 :] if line[name_end] == "{" and "}" in line else line[name_end:]
        value_text = rest.split()
        if not value_text:
            continue
        try:
            value = float(value_text[0])
        except ValueError:
            continue
        sums[name] = sums.get(name, 0.0) + value
    if _RUNNING not in sums and _WAITING not in sums:
        return None
    kv = next((sums[n] for n in _KV_CACHE if n in sums), None)
    generated = next((sums[n] for n in _GENERATED if n in sums), None)
    return EngineLoad(
        running=int(sums.get(_RUNNING, 0.0)),
        waiting=int(sums.get(_WAITING, 0.0)),
        kv_cache=kv,
        generated_tokens=generated,
    )
