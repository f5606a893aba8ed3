"""The catalogue: which model is served by which upstreams.

Built from the config. Upstreams that list their models in the config are taken at their
word; the others are asked (GET /v1/models) at start-up and every `discovery_interval_s`.
A model that an upstream stops listing disappears; an upstream that cannot be reached keeps
its last known models, so its trouble shows as 502/503 (fail over) rather than 404.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.relay.base import Relay, RelayError, Upstream

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Deployment:
    """A model (by its public name) served by one upstream under `upstream_model`."""

    model: str
    upstream: Upstream
    upstream_model: str


@dataclass(frozen=True, slots=True)
class UpstreamSource:
    upstream: Upstream
    models: tuple[str, ...] | None  # None: discover


@dataclass(frozen=True, slots=True)
class ModelRule:
    """Admin rules for a public model name: where it may run, what the engine calls it."""

    clusters: frozenset[str] | None = None
    served_name: str | None = None


class WorkerDirectory(Protocol):
    """A site that says which of its workers are READY (the `status` site function)."""

    cluster: str
    start_workers: bool  # it may start workers for the models it lists (cold start)
    last_status: dict[str, Any] | None  # what its `status` said last

    async def ready_workers(self) -> list[UpstreamSource]: ...


StatusObserver = Callable[[str, dict[str, Any]], None]


class Catalogue:
    def __init__(
        self,
        sources: Iterable[UpstreamSource],
        relay: Relay,
        rules: dict[str, ModelRule] | None = None,
        directories: Iterable[WorkerDirectory] = (),
    ) -> None:
        self._static = list(sources)
        self._sources = list(self._static)
        self._directories = list(directories)
        self._relay = relay
        self._rules = rules or {}
        self._served_to_public = {r.served_name: name for name, r in self._rules.items() if r.served_name}
        self._served: dict[str, tuple[str, ...]] = {
            s.upstream.name: s.models for s in self._sources if s.models is not None
        }
        self._by_model: dict[str, tuple[Deployment, ...]] = {}
        self._startable: dict[str, frozenset[str]] = {}
        self._created: dict[str, int] = {}
        self._observers: list[StatusObserver] = []
        self.down_clusters: frozenset[str] = frozenset()  # whose site did not answer its last status
        self._rebuild()

    def deployments(self, model: str) -> tuple[Deployment, ...]:
        return self._by_model.get(model, ())

    def models(self) -> list[tuple[str, int]]:
        """(public model name, first-seen unix time), sorted by name: the models served now and
        those a site can start on demand (cold)."""
        return [(m, self._created[m]) for m in sorted(self._by_model.keys() | self._startable.keys())]

    def startable(self, model: str) -> frozenset[str]:
        """Clusters whose site lists `model` (public name) and may start workers for it."""
        return self._startable.get(model, frozenset())

    def public_name(self, served: str, cluster: str) -> str | None:
        """The public name of a model an engine or site calls `served`, on `cluster`; None if the
        config does not offer it there."""
        public = self._served_to_public.get(served, served)
        rule = self._rules.get(public)
        if self._rules and rule is None:
            return None  # the config names its models: serve only those
        if rule is not None and rule.clusters is not None and cluster not in rule.clusters:
            return None
        return public

    def observe_status(self, observer: StatusObserver) -> None:
        """Call `observer(cluster, status)` with every site status the catalogue reads."""
        self._observers.append(observer)

    async def refresh(self) -> None:
        """Ask every site for its READY workers and every discovering upstream for its models."""
        await self._refresh_directories()
        discovering = [s.upstream for s in self._sources if s.models is None]
        results = await asyncio.gather(
            *(self._relay.list_models(u) for u in discovering), return_exceptions=True
        )
        for upstream, result in zip(discovering, results, strict=True):
            if isinstance(result, RelayError):
                log.warning(
                    "model discovery failed", extra={"upstream": upstream.name, "reason": result.detail}
                )
            elif isinstance(result, BaseException):
                raise result
            else:
                self._served[upstream.name] = tuple(result)
        self._rebuild()

    async def _refresh_directories(self) -> None:
        if not self._directories:
            return
        found = await asyncio.gather(*(d.ready_workers() for d in self._directories), return_exceptions=True)
        dynamic: list[UpstreamSource] = []
        down = set()
        for directory, result in zip(self._directories, found, strict=True):
            if isinstance(result, RelayError):
                down.add(directory.cluster)
                # Keep what the site said last time: its workers are most likely still there,
                # though the router tries them after those of clusters whose site answers.
                log.warning(
                    "worker discovery failed", extra={"cluster": directory.cluster, "reason": result.detail}
                )
                dynamic.extend(
                    s
                    for s in self._sources
                    if s not in self._static and s.upstream.cluster == directory.cluster
                )
            elif isinstance(result, BaseException):
                raise result
            else:
                dynamic.extend(result)
                if directory.last_status is not None:
                    for observer in self._observers:
                        observer(directory.cluster, directory.last_status)
        self.down_clusters = frozenset(down)
        self._sources = self._static + dynamic
        for source in dynamic:
            if source.models is not None:
                self._served[source.upstream.name] = source.models

    async def run_discovery(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await self.refresh()

    def _rebuild(self) -> None:
        by_model: dict[str, list[Deployment]] = {}
        for source in self._sources:
            up = source.upstream
            for served in self._served.get(up.name, ()):
                public = self.public_name(served, up.cluster)
                if public is not None:
                    by_model.setdefault(public, []).append(Deployment(public, up, served))
        startable: dict[str, set[str]] = {}
        for directory in self._directories:
            if not directory.start_workers:
                continue
            for served in (directory.last_status or {}).get("models", ()):
                public = self.public_name(str(served), directory.cluster)
                if public is not None:
                    startable.setdefault(public, set()).add(directory.cluster)
        now = int(time.time())
        for model in by_model.keys() | startable.keys():
            self._created.setdefault(model, now)
        self._by_model = {m: tuple(d) for m, d in by_model.items()}
        self._startable = {m: frozenset(c) for m, c in startable.items()}
