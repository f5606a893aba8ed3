"""The router: in which order to try the deployments of a model.

Least loaded first. An upstream's load score is the requests a new one would queue behind
there: this replica's requests in flight at it, plus (from a fresh engine sample on the
`LoadBoard`) the requests waiting at the engine and a penalty when its KV cache is nearly full.
An upstream that just failed (a circuit breaker, open for `cooldown_s`), whose engine has
stopped making progress, or whose cluster's site did not answer its last status
(`Catalogue.down_clusters`) goes behind all the others, but is still tried last rather than
refusing the request outright.

Ties rotate round-robin, so load spreads over equal upstreams. A request that carries an
affinity key (its conversation's prefix, `gateway.routing.affinity`) instead goes to the
upstream that rendezvous hashing picks for the key among those in the best one's cluster that
are at most `AFFINITY_SLACK` busier than it: the same conversation keeps reaching the same
engine, whose prefix cache then holds its start, on every gateway replica alike.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping
from hashlib import blake2b

from gateway.errors import ModelNotFound
from gateway.routing.catalogue import Catalogue, Deployment
from gateway.routing.load import LoadBoard, Sample

# How much busier than the least loaded (in requests queued ahead) the upstream a conversation
# is affine to may be and still get it: a prefix-cache hit saves the prefill of the shared
# start, worth about as much as waiting behind a request or two, not more.
AFFINITY_SLACK = 2

_DOWN = 1 << 40  # added to the score of an upstream whose breaker is open, engine stalled or site is down


class Router:
    def __init__(
        self,
        catalogue: Catalogue,
        *,
        cooldown_s: float = 5.0,
        failure_threshold: int = 1,
        board: LoadBoard | None = None,
        prefix_affinity: bool = True,
    ) -> None:
        self.catalogue = catalogue
        self.board = board
        self.prefix_affinity = prefix_affinity
        self._cooldown = cooldown_s
        self._threshold = failure_threshold
        self._samples: Mapping[str, Sample] = board.samples if board is not None else {}
        self._in_flight: dict[str, int] = {}
        self._by_deployment: dict[tuple[str, str], int] = {}
        self._failures: dict[str, int] = {}
        self._open_until: dict[str, float] = {}
        self._tick = itertools.count()

    def wants_affinity(self, model: str) -> bool:
        """Whether an affinity key would matter for `model`: prefix affinity is on and the
        model has more than one deployment (so the caller computes the key only then)."""
        return self.prefix_affinity and len(self.catalogue.deployments(model)) > 1

    def candidates(self, model: str, affinity: bytes | None = None) -> list[Deployment]:
        """Deployments to try, best first. Raises ModelNotFound for an unknown model."""
        deployments = self.catalogue.deployments(model)
        if not deployments:
            raise ModelNotFound(model)
        if len(deployments) == 1:
            return list(deployments)
        now = time.monotonic()
        in_flight = self._in_flight
        open_until = self._open_until
        samples = self._samples
        sites_down = self.catalogue.down_clusters
        scores: list[int] = []
        for d in deployments:
            name = d.upstream.name
            score = in_flight.get(name, 0)
            down = (bool(open_until) and open_until.get(name, 0.0) > now) or (
                bool(sites_down) and d.upstream.cluster in sites_down
            )
            sample = samples.get(name)
            if sample is not None and sample.fresh_until > now:
                score += sample.pressure
                down = down or sample.stalled
            scores.append(score + _DOWN if down else score)
        order = sorted(range(len(deployments)), key=scores.__getitem__)
        best = scores[order[0]]
        if affinity is not None and self.prefix_affinity:
            ordered = [deployments[i] for i in order]
            if scores[order[1]] <= best + AFFINITY_SLACK:
                pick = self._affine(ordered, order, scores, affinity)
                if pick:
                    ordered.insert(0, ordered.pop(pick))
            return ordered
        tied = 1
        while tied < len(order) and scores[order[tied]] == best:
            tied += 1
        if tied > 1:  # rotate among the equally good only, so they alternate evenly
            k = next(self._tick) % tied
            order[:tied] = order[k:tied] + order[:k]
        return [deployments[i] for i in order]

    def _affine(self, ordered: list[Deployment], order: list[int], scores: list[int], key: bytes) -> int:
        """The position in `ordered` of the deployment rendezvous hashing picks for `key` among
        those within `AFFINITY_SLACK` of the best, in the cluster of the best (if several are
        best, the one the key picks among them, so a key also keeps to one cluster).

        A deployment's weight for the key is blake2b(key, upstream name): the same in every
        process (unlike hash()), and when a worker leaves only its own keys move."""
        base = blake2b(key, digest_size=8)
        best = scores[order[0]]
        limit = best + AFFINITY_SLACK
        weights: list[bytes] = []
        cluster = ""
        top = b""
        for pos, d in enumerate(ordered):
            score = scores[order[pos]]
            if score > limit:
                break
            h = base.copy()
            h.update(d.upstream.name.encode())
            weight = h.digest()
            weights.append(weight)
            if score == best and weight > top:
                top, cluster = weight, d.upstream.cluster
        pick, top = 0, b""
        for pos, weight in enumerate(weights):
            if weight > top and ordered[pos].upstream.cluster == cluster:
                pick, top = pos, weight
        return pick

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
        """Whether the upstream is only tried after its peers: it failed recently, or its engine
        has requests running but has generated nothing for a while."""
        if self._open_until.get(upstream_name, 0.0) > time.monotonic():
            return True
        return self.board is not None and self.board.stalled(upstream_name)

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
