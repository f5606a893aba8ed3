"""Live state of the SIMULATED engine: its FIFO of request slots and its Prometheus metrics.

The simulator (`endpoints.engines.sim`) keeps one `SimState` per aiohttp application, so
two simulators in one process (as tests run them) never share a counter. The metric names
are vLLM's (https://docs.vllm.ai/en/latest/design/metrics.html) so that whatever reads a
real worker's `/metrics` reads the simulator's the same way; Hearth's own additions are
named `hearth_sim_*`. The text is written by hand in the Prometheus exposition format
(https://prometheus.io/docs/instrumenting/exposition_formats/): it has a handful of series
and must cost next to nothing under load.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque

__all__ = ["METRICS_CONTENT_TYPE", "SimState", "SlotGate"]

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class SlotGate:
    """A strictly first-in-first-out semaphore with `capacity` slots.

    Like vLLM's `max_num_seqs`: up to `capacity` requests run, the rest wait in arrival
    order. `running` and `waiting` are exact at any moment, which the metrics need and
    `asyncio.Semaphore` does not expose. A waiter cancelled while queued leaves the queue;
    one cancelled just after being handed a slot passes the slot on.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {capacity}")
        self.capacity = capacity
        self.running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> None:
        if self.running < self.capacity and not self._waiters:
            self.running += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # the slot was handed over just as we were cancelled
            else:
                with contextlib.suppress(ValueError):  # release() may have dropped it already
                    self._waiters.remove(fut)
            raise

    def release(self) -> None:
        """Hand the slot to the oldest waiter, or free it."""
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # `running` is unchanged: the slot changes hands
                return
        self.running -= 1


class SimState:
    """Everything one simulator instance counts, plus its slot gate."""

    def __init__(self, model: str, max_concurrency: int) -> None:
        self.model = model
        self.started = int(time.time())
        self.gate = SlotGate(max_concurrency)
        self.requests_total = 0
        self.requests_cancelled = 0
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.success_by_reason: dict[str, int] = {"length": 0}
        # The W3C `traceparent` headers of the last POSTs that carried one (GET /debug/traces),
        # so tests can check that a relay passed the trace context on.
        self.traceparents: deque[str] = deque(maxlen=1000)
        self._label = f'model_name="{_escape(model)}"'

    def record_success(self, finish_reason: str) -> None:
        self.success_by_reason[finish_reason] = self.success_by_reason.get(finish_reason, 0) + 1

    def render_metrics(self) -> str:
        """The Prometheus text exposition of the current values (gauges are live)."""
        label = self._label
        usage = self.gate.running / self.gate.capacity
        lines: list[str] = []

        def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
            lines.append(f"# HELP {name} {help_}")
            lines.append(f"# TYPE {name} {kind}")
            sample_name = f"{name}_total" if kind == "counter" else name
            lines.extend(f"{sample_name}{{{labels}}} {value!r}" for labels, value in samples)

        metric(
            "vllm:num_requests_running",
            "gauge",
            "Number of requests holding a slot (simulated engine).",
            [(label, float(self.gate.running))],
        )
        metric(
            "vllm:num_requests_waiting",
            "gauge",
            "Number of requests queued for a slot (simulated engine).",
            [(label, float(self.gate.waiting))],
        )
        for name in ("vllm:gpu_cache_usage_perc", "vllm:kv_cache_usage_perc"):
            metric(
                name,
                "gauge",
                "Simulated KV-cache usage: running / max_concurrency. 1 means 100 percent.",
                [(label, usage)],
            )
        metric(
            "vllm:prompt_tokens",
            "counter",
            "Number of prefill tokens processed (simulated engine).",
            [(label, float(self.prompt_tokens))],
        )
        metric(
            "vllm:generation_tokens",
            "counter",
            "Number of generation tokens processed (simulated engine).",
            [(label, float(self.generation_tokens))],
        )
        metric(
            "vllm:request_success",
            "counter",
            "Count of successfully finished requests (simulated engine).",
            [
                (f'finished_reason="{_escape(reason)}",{label}', float(count))
                for reason, count in sorted(self.success_by_reason.items())
            ],
        )
        metric(
            "hearth_sim_requests",
            "counter",
            "POST requests received on /v1 by the Hearth simulated engine, whatever their outcome.",
            [(label, float(self.requests_total))],
        )
        metric(
            "hearth_sim_requests_cancelled",
            "counter",
            "Requests the Hearth simulated engine stopped because the client went away.",
            [(label, float(self.requests_cancelled))],
        )
        lines.append("")
        return "\n".join(lines)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
