"""Workers found by asking a site: the READY workers its `status` function reports.

For a `compute` cluster with `compute.discover_workers`, the catalogue asks the site (through
Globus Compute) which workers are READY; each becomes an upstream serving its model, reached
at the address and with the key the site gives. Workers that stop being READY drop out at the
next refresh. The engine load the site reports with each READY worker goes to the router's
`LoadBoard`.
"""

from __future__ import annotations

from typing import Any

from gateway.relay.base import Upstream
from gateway.relay.compute import ComputeRelay
from gateway.routing.catalogue import UpstreamSource
from gateway.routing.load import LoadBoard, load_from_wire


class SiteDirectory:
    def __init__(
        self,
        cluster: str,
        relay: ComputeRelay,
        site_config: str | None = None,
        *,
        start_workers: bool = False,
        priority: int = 0,
        board: LoadBoard | None = None,
        load_max_age_s: float | None = None,
    ) -> None:
        self.cluster = cluster
        self.relay = relay
        self.site_config = site_config
        self.start_workers = start_workers  # cold start: may start workers here on demand
        self.priority = priority  # the admin's preference among clusters that could start one
        self.last_status: dict[str, Any] | None = None  # what the site said at the last refresh
        # Where the engine load the site reports for each READY worker goes (for the router),
        # and how long it is used: the site is asked only every discovery interval, so this is
        # longer than for the upstreams the gateway polls itself (None: the board's default).
        self.board = board
        self.load_max_age_s = load_max_age_s

    async def ready_workers(self) -> list[UpstreamSource]:
        status = await self.relay.site_status(self.cluster, self.site_config)
        self.last_status = status
        if self.board is not None:
            self._report_load(self.board, status)
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

    def _report_load(self, board: LoadBoard, status: dict[str, Any]) -> None:
        """Put the load of each READY worker that reports one on the board; drop the samples of
        this cluster's workers that are not READY any more."""
        prefix = f"{self.cluster}/"
        present: set[str] = set()
        for w in status.get("workers", []):
            if w.get("state") != "ready":
                continue
            name = f"{prefix}{w['worker_id']}"
            present.add(name)
            load = load_from_wire(w.get("load"))
            if load is not None:
                board.update(name, load, max_age_s=self.load_max_age_s)
        board.forget(present, prefix=prefix)
