"""Prometheus metrics of one gateway process, on a registry of its own (no module state).

Names follow Prometheus conventions with the ``hearth_`` prefix. Label values are bounded:
model names from the catalogue, upstream names from the config, endpoint names from the API.
"""

from __future__ import annotations

from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase

MetricT = TypeVar("MetricT", bound=MetricWrapperBase)

# Latency buckets from 1 ms (gateway overhead) to 10 min (long generations).
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[int, tuple[str, ...]], object] = {}
        r = self.registry
        self.requests = Counter(
            "hearth_requests",
            "Inference requests answered, by outcome status.",
            ["endpoint", "model", "upstream", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "hearth_request_duration_seconds",
            "Time from request to last byte.",
            ["endpoint", "model", "upstream"],
            buckets=_LATENCY,
            registry=r,
        )
        self.ttft = Histogram(
            "hearth_time_to_first_token_seconds",
            "Time from request to first streamed event.",
            ["model", "upstream"],
            buckets=_LATENCY,
            registry=r,
        )
        self.tokens = Counter(
            "hearth_tokens",
            "Tokens processed, by kind (prompt or completion).",
            ["model", "upstream", "kind"],
            registry=r,
        )
        self.in_flight = Gauge(
            "hearth_requests_in_flight",
            "Requests being relayed now (read from the router at scrape time).",
            ["model", "upstream"],
            registry=r,
        )
        self.upstream_failures = Counter(
            "hearth_upstream_failures",
            "Failed attempts at an upstream, by reason.",
            ["upstream", "reason"],
            registry=r,
        )
        self.limiter_rejections = Counter(
            "hearth_limiter_rejections",
            "Requests refused by a limit, by limit (requests, tokens, daily_tokens, concurrent) and "
            "scope (user, group, model).",
            ["limit", "scope"],
            registry=r,
        )
        self.limiter_degraded = Gauge(
            "hearth_limiter_degraded",
            "1 while Redis cannot be reached and the limiter runs in its failure mode.",
            registry=r,
        )
        self.usage_dropped = Gauge(
            "hearth_usage_records_dropped",
            "Usage records dropped because the queue was full.",
            registry=r,
        )
        self.usage_pending = Gauge(
            "hearth_usage_records_pending",
            "Usage records waiting to be written.",
            registry=r,
        )

    def child(self, metric: MetricT, *labels: str) -> MetricT:
        """`metric.labels(*labels)`, memoised: prometheus_client's lookup takes a lock each time."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found  # type: ignore[return-value]

    def render(self) -> bytes:
        return generate_latest(self.registry)
