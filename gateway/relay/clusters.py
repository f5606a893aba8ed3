"""Each cluster's relay behind one `Relay`: requests go by the upstream's cluster.

A cluster's config says which relay reaches it (`direct` HTTP, or `compute` through Globus
Compute); the dispatcher and the catalogue just see a relay.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from gateway.relay.base import EventStream, Relay, Upstream, UpstreamCall, UpstreamReply


class ClusterRelays(Relay):
    def __init__(self, by_cluster: Mapping[str, Relay], default: Relay) -> None:
        self.by_cluster = dict(by_cluster)
        self.default = default

    def _for(self, upstream: Upstream) -> Relay:
        return self.by_cluster.get(upstream.cluster, self.default)

    async def send(self, upstream: Upstream, call: UpstreamCall) -> UpstreamReply:
        return await self._for(upstream).send(upstream, call)

    async def open_stream(self, upstream: Upstream, call: UpstreamCall) -> EventStream | UpstreamReply:
        return await self._for(upstream).open_stream(upstream, call)

    async def list_models(self, upstream: Upstream) -> list[str]:
        return await self._for(upstream).list_models(upstream)

    async def close(self) -> None:
        relays = {id(r): r for r in [self.default, *self.by_cluster.values()]}
        await asyncio.gather(*(r.close() for r in relays.values()))
