"""Workers found by asking a site: the READY workers its `status` function reports.

For a `compute` cluster with `compute.discover_workers`, the catalogue asks the site (through
Globus Compute) which workers are READY; each becomes an upstream serving its model, reached
at the address and with the key the site gives. Workers that stop being READY drop out at the
next refresh.
"""

from __future__ import annotations

from typing import Any

from gateway.relay.base import Upstream
from gateway.relay.compute import ComputeRelay
from gateway.routing.catalogue import UpstreamSource


class SiteDirectory:
    def __init__(
        self,
        cluster: str,
        relay: ComputeRelay,
        site_config: str | None = None,
        *,
        start_workers: bool = False,
    ) -> None:
        self.cluster = cluster
        self.relay = relay
        self.site_config = site_config
        self.start_workers = start_workers  # cold start: may start workers here on demand
        self.last_status: dict[str, Any] | None = None  # what the site said at the last refresh

    async def ready_workers(self) -> list[UpstreamSource]:
        status = await self.relay.site_status(self.cluster, self.site_config)
        self.last_status = status
        return [
            UpstreamSource(
                Upstream(
                    name=f"{self.cluster}/{w['worker_id']}",
                    cluster=self.cluster,
                    base_url=w["base_url"],
                    api_key=w.get("api_key"),
                ),
                (str(w["model"]),),
            )
            for w in status.get("workers", [])
            if w.get("state") == "ready" and w.get("base_url")
        ]
