"""How long a worker takes to start, learned from what the sites report: the estimated wait.

Every site status the gateway reads (`Catalogue.observe_status`) is noted: the first time each
worker was seen queued, loading and READY. From workers that went from loading to READY, a moving
average of the load time per model and cluster; until one has been seen, `default_load_s`
(`relay.cold_start_estimate_s`). The wait for a model that is not hot on a cluster is then:

- loading: the load time still to go (at least a few seconds: it is not READY yet);
- queued: until Slurm's expected start (`starts_at`, when Slurm gives one), plus the load time;
- cold: nothing to queue for when the site has a free node, plus the load time.

A queued or cold model on a cluster with no free node and no expected start from Slurm has no
estimate (None): the honest answer is that the scheduler cannot say.
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["StartupClock"]

_ALPHA = 0.3  # weight of the newest start in the moving average
_MIN_REMAINING_S = 5.0


class StartupClock:
    def __init__(self, default_load_s: float) -> None:
        self.default_load_s = default_load_s
        self._seen: dict[tuple[str, str], dict[str, float]] = {}  # (cluster, worker) -> state -> first seen
        self._load_s: dict[tuple[str, str], float] = {}  # (cluster, model) -> moving average

    def observe(self, cluster: str, status: dict[str, Any], now: float | None = None) -> None:
        """Note the states of `cluster`'s workers in one `status` result."""
        now = time.time() if now is None else now
        present = set()
        for w in status.get("workers", ()):
            key = (cluster, str(w.get("worker_id")))
            present.add(key)
            seen = self._seen.setdefault(key, {})
            state = str(w.get("state"))
            if state in seen:
                continue
            seen[state] = now
            if state == "ready" and "starting" in seen:
                self._learn((cluster, str(w.get("model"))), now - seen["starting"])
        for key in [k for k in self._seen if k[0] == cluster and k not in present]:
            del self._seen[key]

    def load_s(self, cluster: str, model: str) -> float:
        """The expected time from a job starting to `model` answering on `cluster`."""
        return self._load_s.get((cluster, model), self.default_load_s)

    def estimate(
        self, cluster: str, model: str, status: dict[str, Any], now: float | None = None
    ) -> float | None:
        """Seconds until a worker for `model` (the site's name) could answer on `cluster`, from the
        site's `status`; 0 when one is READY, None when it cannot be told."""
        now = time.time() if now is None else now
        load = self.load_s(cluster, model)
        workers = [w for w in status.get("workers", ()) if w.get("model") == model]
        if any(w.get("state") == "ready" for w in workers):
            return 0.0
        free = int(status.get("free_nodes") or 0) > 0
        best: float | None = None
        for w in workers:
            state = w.get("state")
            wait: float | None = None
            if state == "starting":
                since = self._seen.get((cluster, str(w.get("worker_id"))), {}).get("starting", now)
                wait = max(_MIN_REMAINING_S, load - (now - since))
            elif state == "pending":
                starts_at = w.get("starts_at")
                if starts_at is not None:
                    wait = max(0.0, float(starts_at) - now) + load
                elif free:
                    wait = load
            if wait is not None and (best is None or wait < best):
                best = wait
        if best is None and free:
            best = load  # a start now would run at once
        return None if best is None else round(best, 1)

    def _learn(self, key: tuple[str, str], seconds: float) -> None:
        old = self._load_s.get(key)
        self._load_s[key] = seconds if old is None else old + _ALPHA * (seconds - old)
