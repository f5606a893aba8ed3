"""Where to start a worker when several clusters could: the cold-start and scale-out choice.

A cluster whose site can run the model (its `status` lists it) ranks by, in order: a worker for
the model already queued or starting there (join it rather than start another), whole nodes
free now (`sinfo`: the job should start at once), the admin's `clusters.<name>.priority`, and
fewest worker jobs already waiting in its queue. Ties go by cluster name, so every replica
chooses alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gateway.routing.sites import SiteDirectory

__all__ = ["pending_worker", "rank_sites"]


def pending_worker(model: str, site: SiteDirectory) -> str | None:
    """A worker for `model` already queued or starting at `site` (someone started it)."""
    for w in _workers(site):
        if w.get("model") == model and w.get("state") in ("pending", "starting"):
            return str(w["worker_id"])
    return None


def rank_sites(
    model: str, sites: Sequence[SiteDirectory], *, join_pending: bool = True
) -> list[SiteDirectory]:
    """The sites that list `model`, best place to start a worker for it first."""

    def key(site: SiteDirectory) -> tuple[bool, bool, int, int, str]:
        status = site.last_status or {}
        free = int(status.get("free_nodes") or 0)
        queued = sum(1 for w in _workers(site) if w.get("state") == "pending")
        joining = join_pending and pending_worker(model, site) is not None
        return (not joining, free <= 0, -site.priority, queued, site.cluster)

    listing = [s for s in sites if model in (s.last_status or {}).get("models", ())]
    return sorted(listing, key=key)


def _workers(site: SiteDirectory) -> list[dict[str, Any]]:
    workers: list[dict[str, Any]] = (site.last_status or {}).get("workers", [])
    return workers
