"""Prometheus metrics of one gateway process, on a registry of its own (no module state).

Names follow Prometheus conventions with the ``hearth_`` prefix (counters are exposed with
``_total``). Label values are bounded: model names from the catalogue, cluster and upstream
names from the config, endpoint names from the API, and small fixed sets (kind, state, reason).
The gauges that describe the present (in flight, queue depth, workers, usage queue) are set
at scrape time by GET /metrics (`gateway.api.status`), not on the request path.

The series every request updates (requests, latency, TTFT, tokens, inter-token gaps) are
`LoopCounter` and `LoopHistogram`: plain numbers without prometheus_client's lock per update,
exported at scrape time. They are updated and scraped from the event loop's thread only.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Mapping
from itertools import pairwise
from typing import Any, Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

MetricT = TypeVar("MetricT", bound=MetricWrapperBase)

# Latency buckets from 1 ms (gateway overhead) to 10 min (long generations).
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
# Gaps between tokens: vLLM's buckets for vllm:time_per_output_token_seconds (10 ms to 80 s),
# with finer steps below 10 ms for fast engines and the simulator.
_INTER_TOKEN = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip

WORKER_STATES = ("hot", "starting", "queued", "cold", "offline")
AUTH_METHODS = ("static_key", "api_key", "globus")


class HistogramSeries:
    """One label set of a `LoopHistogram`: bucket counts (the last is +Inf) and the sum.

    Observing costs a fraction of `prometheus_client`'s (no lock; a batch of gaps is sorted
    once and split at the bounds). It is only called from the event loop's thread, as is the
    scrape.
    """

    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self._bounds, value)] += 1  # value <= bound: `le` semantics
        self.sum += value

    def observe_gaps(self, times: list[float]) -> None:
        """Observe each gap between consecutive `times` (ascending)."""
        gaps = sorted([b - a for a, b in pairwise(times)])
        counts, start, n = self.counts, 0, len(gaps)
        for i, bound in enumerate(self._bounds):
            end = bisect_right(gaps, bound, start)  # gaps <= bound: `le` semantics
            counts[i] += end - start
            start = end
            if start == n:
                break
        counts[-1] += n - start
        self.sum += sum(gaps)


class CounterSeries:
    """One label set of a `LoopCounter`."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("counters only go up")
        self.value += amount


SeriesT = TypeVar("SeriesT", CounterSeries, HistogramSeries)


class _LoopMetric(Collector, Generic[SeriesT]):
    """A metric's series by label values, created on first use."""

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self._series: dict[tuple[str, ...], SeriesT] = {}

    def labels(self, *values: str) -> SeriesT:
        found = self._series.get(values)
        if found is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
            found = self._series[values] = self._new_series()
        return found

    def _new_series(self) -> SeriesT:
        raise NotImplementedError


class LoopCounter(_LoopMetric[CounterSeries]):
    """A counter updated from the event loop's thread, exposed as ``<name>_total``."""

    def _new_series(self) -> CounterSeries:
        return CounterSeries()

    def describe(self) -> list[Metric]:
        return [CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, series in list(self._series.items()):
            family.add_metric(list(values), series.value)
        yield family


class LoopHistogram(_LoopMetric[HistogramSeries]):
    """A histogram updated from the event loop's thread, collected at scrape time."""

    def __init__(
        self, name: str, documentation: str, labelnames: tuple[str, ...], buckets: tuple[float, ...]
    ) -> None:
        super().__init__(name, documentation, labelnames)
        self.buckets = buckets

    def _new_series(self) -> HistogramSeries:
        return HistogramSeries(self.buckets)

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        bounds = [floatToGoString(b) for b in self.buckets] + ["+Inf"]  # type: ignore[no-untyped-call]
        for values, series in list(self._series.items()):
            cumulative, total = [], 0
            for bound, count in zip(bounds, series.counts, strict=True):
                total += count
                cumulative.append((bound, total))
            family.add_metric(list(values), cumulative, series.sum)
        yield family


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[int, tuple[str, ...]], object] = {}
        r = self.registry
        self.requests = LoopCounter(
            "hearth_requests",
            "Inference requests answered, by outcome status (cluster and upstream are empty when no "
            "upstream could answer).",
            ("endpoint", "model", "cluster", "upstream", "status"),
        )
        self.latency = LoopHistogram(
            "hearth_request_duration_seconds",
            "Time from request to last byte, for requests an upstream answered.",
            ("endpoint", "model", "cluster"),
            _LATENCY,
        )
        self.ttft = LoopHistogram(
            "hearth_time_to_first_token_seconds",
            "Time from request to the first streamed event (streams only).",
            ("model", "cluster"),
            _LATENCY,
        )
        self.inter_token = LoopHistogram(
            "hearth_inter_token_latency_seconds",
            "Time between two consecutive streamed events that carry generated text, one observation "
            "per gap, as the gateway receives them (like vllm:time_per_output_token_seconds).",
            ("model", "cluster"),
            _INTER_TOKEN,
        )
        self.tokens = LoopCounter(
            "hearth_tokens",
            "Tokens processed, by kind (prompt or completion).",
            ("model", "cluster", "kind"),
        )
        for loop_metric in (self.requests, self.latency, self.ttft, self.inter_token, self.tokens):
            r.register(loop_metric)
        self.in_flight = Gauge(
            "hearth_requests_in_flight",
            "Requests being relayed now (read from the router at scrape time).",
            ["model", "upstream"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "hearth_queue_depth",
            "Requests this gateway has sent to the model's workers on the cluster and that have not "
            "had a first byte back yet: a stream until its first event, a non-streaming request until "
            "its answer (engines send nothing before). Waiting in the engine's queue, in prefill, and "
            "(non-streaming) generating. Read at scrape time.",
            ["model", "cluster"],
            registry=r,
        )
        self.workers = Gauge(
            "hearth_workers",
            "Workers of a model on a cluster by state, as GET /v1/status reports them: hot counts the "
            "upstreams taking requests, starting the engines loading, queued the worker jobs waiting "
            "in the scheduler; cold (can be started) and offline (nothing can serve it) are 1 for the "
            "model and cluster in that state. Read at scrape time.",
            ["model", "cluster", "state"],
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
        self.auth_decisions = Counter(
            "hearth_auth_decisions",
            "Credentials checked (cache misses only), by method (static_key, api_key, globus) and "
            "outcome (allow, deny, unavailable: the store or Globus could not be asked).",
            ["method", "outcome"],
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
        self.site_up = Gauge(
            "hearth_site_up",
            "1 when the cluster's site answered its last status (discover_workers), 0 when it did not "
            "(Globus Compute endpoint or slurmctld down): its workers are then tried after other "
            "clusters'. Read at scrape time.",
            ["cluster"],
            registry=r,
        )
        self.scheduler_leader = Gauge(
            "hearth_scheduler_leader",
            "1 while this replica is the hot-node scheduler's leader (decides how many workers run).",
            registry=r,
        )
        self.scheduler_decisions = Counter(
            "hearth_scheduler_decisions",
            "Scheduler decisions carried out, by action (start, drain, renew) and reason_kind "
            "(demand, min_hot, prewarm, idle, walltime, replaced).",
            ["model", "cluster", "action", "reason_kind"],
            registry=r,
        )
        self.scheduler_desired = Gauge(
            "hearth_scheduler_desired_workers",
            "Workers the scheduler's leader wants for a model, all clusters together (leader only).",
            ["model"],
            registry=r,
        )
        self.scheduler_demand = Gauge(
            "hearth_scheduler_demand",
            "Moving average of a model's demand (requests in flight and waiting, all replicas and "
            "engine queues) that the scheduler's leader decides from (leader only).",
            ["model"],
            registry=r,
        )

    def child(self, metric: MetricT, *labels: str) -> MetricT:
        """`metric.labels(*labels)`, memoised: prometheus_client's lookup takes a lock each time."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found  # type: ignore[return-value]

    def set_present(
        self,
        *,
        in_flight: Mapping[tuple[str, str], int],
        awaiting_first_byte: Mapping[tuple[str, str], int],
        model_status: Iterable[Mapping[str, Any]],
        usage_pending: int,
        usage_dropped: int,
        sites_up: Mapping[str, bool] | None = None,
    ) -> None:
        """Set the gauges that describe now, before a scrape.

        `in_flight` is by (model, upstream), `awaiting_first_byte` by (model, cluster), and
        `model_status` is `gateway.routing.status.model_status` (every model, every cluster).
        Series of models and clusters that are gone are dropped.
        """
        self.usage_pending.set(usage_pending)
        self.usage_dropped.set(usage_dropped)
        for cluster, up in (sites_up or {}).items():
            self.site_up.labels(cluster).set(int(up))
        for (model, upstream), n in in_flight.items():
            self.in_flight.labels(model, upstream).set(n)
        self.workers.clear()
        self.queue_depth.clear()
        depth = dict(awaiting_first_byte)
        for entry in model_status:
            model = entry["model"]
            for c in entry["clusters"]:
                cluster, state = c["cluster"], c["state"]
                counts = {"hot": c["ready"], "starting": c["starting"], "queued": c["queued"]}
                for s in WORKER_STATES:
                    value = counts[s] if s in counts else int(state == s)
                    self.workers.labels(model, cluster, s).set(value)
                depth.setdefault((model, cluster), 0)
        for (model, cluster), n in depth.items():
            self.queue_depth.labels(model, cluster).set(n)

    def render(self) -> bytes:
        return generate_latest(self.registry)
