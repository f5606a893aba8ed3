"""The router: in which order to try the deployments of a model.

Least in-flight first (ties broken round-robin), so load spreads over equal upstreams; an
upstream that just failed is put behind the others for `cooldown_s` (a circuit breaker),
but is still tried last rather than refusing the request outright.
"""

from __future__ import annotations

import itertools
import time

from gateway.errors import ModelNotFound
from gateway.routing.catalogue import Catalogue, Deployment


class Router:
    def __init__(self, catalogue: Catalogue, *, cooldown_s: float = 5.0, failure_threshold: int = 1) -> None:
        self.catalogue = catalogue
        self._cooldown = cooldown_s
        self._threshold = failure_threshold
        self._in_flight: dict[str, int] = {}
        self._by_deployment: dict[tuple[str, str], int] = {}
        self._failures: dict[str, int] = {}
        self._open_until: dict[str, float] = {}
        self._tick = itertools.count()

    def candidates(self, model: str) -> list[Deployment]:
        """Deployments to try, best first. Raises ModelNotFound for an unknown model."""
        deployments = self.catalogue.deployments(model)
        if not deployments:
            raise ModelNotFound(model)
        if len(deployments) == 1:
            return list(deployments)
        now = time.monotonic()

        def rank(d: Deployment) -> tuple[bool, int]:
            return (self._open_until.get(d.upstream.name, 0.0) > now, self._in_flight.get(d.upstream.name, 0))

        ordered = sorted(deployments, key=rank)
        best = rank(ordered[0])
        tied = 1
        while tied < len(ordered) and rank(ordered[tied]) == best:
            tied += 1
        if tied > 1:  # rotate among the equally good only, so they alternate evenly
            k = next(self._tick) % tied
            ordered[:tied] = ordered[k:tied] + ordered[:k]
        return ordered

    def begin(self, deployment: Deployment) -> None:
        """Count a request in flight at `deployment` (until `end`)."""
        name = deployment.upstream.name
        self._in_flight[name] = self._in_flight.get(name, 0) + 1
        key = (deployment.model, name)
        self._by_deployment[key] = self._by_deployment.get(key, 0) + 1

    def end(self, deployment: Deployment) -> None:
        self._in_flight[deployment.upstream.name] -= 1
        self._by_deployment[(deployment.model, deployment.upstream.name)] -= 1

    def in_flight_by_deployment(self) -> dict[tuple[str, str], int]:
        """Requests in flight per (model, upstream name), for the metrics."""
        return dict(self._by_deployment)

    def cooling(self, upstream_name: str) -> bool:
        """Whether the upstream failed recently and is only tried after its peers."""
        return self._open_until.get(upstream_name, 0.0) > time.monotonic()

    def in_flight(self, upstream_name: str) -> int:
        return self._in_flight.get(upstream_name, 0)

    def succeeded(self, deployment: Deployment) -> None:
        name = deployment.upstream.name
        if self._failures.get(name):
            self._failures[name] = 0
            self._open_until.pop(name, None)

    def failed(self, deployment: Deployment) -> None:
        name = deployment.upstream.name
        count = self._failures.get(name, 0) + 1
        self._failures[name] = count
        if count >= self._threshold:
            self._open_until[name] = time.monotonic() + self._cooldown
