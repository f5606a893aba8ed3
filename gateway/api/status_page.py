"""GET /status: models x clusters as a plain HTML page, for people and wall screens.

The live state is GET /v1/status's (`gateway.routing.status.model_status`); beside it, the last
hour's traffic from the store (`gateway.store.reports.recent_traffic`). Server-rendered from
`gateway/templates/status.html.j2`, inline CSS, no JavaScript; the page reloads itself with
``<meta http-equiv="refresh">``. Public by default (`status_page.public`): it shows model and
cluster names, states and aggregate counts, never a user. docs/admin/status-page.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Annotated, Any

import jinja2
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.exc import SQLAlchemyError

from gateway.auth.principal import Principal
from gateway.config import StatusPageSettings
from gateway.deps import ServicesDep, current_principal
from gateway.routing.status import model_status
from gateway.services import Services
from gateway.store.reports import TrafficRow, recent_traffic

log = logging.getLogger(__name__)

router = APIRouter(tags=["status"])

WINDOW_MINUTES = 60  # the traffic columns: the last hour
CACHE_MAX_S = 10.0  # page data is reused for min(refresh_s, this) seconds per process
TRAFFIC_TIMEOUT_S = 5.0  # a store that hangs must not hold the page
AVAILABLE = frozenset(
    {"hot", "starting", "queued", "cold"}
)  # a request can be served (perhaps after a start)
UNROUTED = "unrouted"  # the state of the row of requests that no cluster answered (cluster "")


@dataclass(frozen=True, slots=True)
class Row:
    """One (model, cluster): its state now and its traffic in the window."""

    model: str
    cluster: str  # "" for requests no cluster answered (no worker available, all failed)
    state: str  # hot | starting | queued | cold | offline | unrouted
    ready: int = 0
    starting: int = 0
    queued: int = 0
    in_flight: int = 0
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    mean_latency_ms: float | None = None

    @property
    def error_pct(self) -> float | None:
        return 100.0 * self.errors / self.requests if self.requests else None


@dataclass(frozen=True, slots=True)
class Overall:
    state: str  # operational | degraded | down
    summary: str  # one sentence a person reads from across the room


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The page's data at one moment, for every model and cluster (filtered per viewer later)."""

    generated: datetime
    rows: tuple[Row, ...]
    traffic_ok: bool  # False: the store did not answer; the traffic columns are empty

    def visible_to(self, principal: Principal | None) -> Snapshot:
        """Only the rows `principal` may use (all of them for the public page)."""
        if principal is None:
            return self
        rows = tuple(
            r
            for r in self.rows
            if principal.may_use(r.model) and (r.cluster == "" or principal.may_use_cluster(r.cluster))
        )
        return replace(self, rows=rows)


def assemble(
    live: Sequence[dict[str, Any]], traffic: Iterable[TrafficRow] | None, generated: datetime
) -> Snapshot:
    """Join `model_status` output with the traffic rows: one row per (model, cluster) in either.

    A model with traffic but no live deployment on that cluster is shown offline; requests no
    cluster answered (recorded with cluster "") get a row of their own, state "unrouted".
    """
    rows: dict[tuple[str, str], Row] = {}
    for entry in live:
        for c in entry["clusters"]:
            rows[entry["model"], c["cluster"]] = Row(
                entry["model"],
                c["cluster"],
                c["state"],
                c["ready"],
                c["starting"],
                c["queued"],
                c["in_flight"],
            )
    for t in traffic or ():
        key = (t.model, t.cluster)
        base = rows.get(key) or Row(t.model, t.cluster, "offline" if t.cluster else UNROUTED)
        rows[key] = replace(
            base,
            requests=t.requests,
            errors=t.errors,
            prompt_tokens=t.prompt_tokens,
            completion_tokens=t.completion_tokens,
            mean_latency_ms=t.mean_latency_ms,
        )
    ordered = sorted(rows.values(), key=lambda r: (r.model, r.cluster == "", r.cluster))
    return Snapshot(generated, tuple(ordered), traffic is not None)


def overall(snapshot: Snapshot) -> Overall:
    """operational: every model can be served somewhere; degraded: some cannot, or the traffic
    figures are missing; down: none can (or there are none)."""
    models: dict[str, bool] = {}
    for r in snapshot.rows:
        models[r.model] = models.get(r.model, False) or r.state in AVAILABLE
    down = sorted(m for m, ok in models.items() if not ok)
    if not models:
        return Overall("down", "No models are being served.")
    if len(down) == len(models):
        return Overall("down", f"No model can be served ({len(models)} known).")
    missing = "" if snapshot.traffic_ok else " Traffic figures are unavailable: the store did not answer."
    if down:
        names = ", ".join(down[:5]) + (f" and {len(down) - 5} more" if len(down) > 5 else "")
        return Overall("degraded", f"{len(down)} of {len(models)} models cannot be served: {names}.{missing}")
    if missing:
        return Overall("degraded", f"All {len(models)} models can be served.{missing}")
    noun = "model" if len(models) == 1 else "models"
    return Overall("operational", f"All {len(models)} {noun} can be served.")


class StatusPage:
    """One per app: the template, and the last snapshot, reused for `ttl_s` so a wall of
    screens costs the store one query per interval (concurrent loads share one query)."""

    def __init__(self, settings: StatusPageSettings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.ttl_s = min(float(settings.refresh_s), CACHE_MAX_S)
        self._clock = clock
        self._lock = asyncio.Lock()
        self._cached: tuple[float, Snapshot] | None = None
        env = jinja2.Environment(
            loader=jinja2.PackageLoader("gateway", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,  # a missing variable is an error, not an empty cell
            trim_blocks=True,
            lstrip_blocks=True,
        )
        env.filters.update(thousands=_thousands, ms=_ms, pct=_pct)
        self._template = env.get_template("status.html.j2")

    async def snapshot(self, services: Services) -> Snapshot:
        async with self._lock:
            if self._cached is not None and self._clock() - self._cached[0] < self.ttl_s:
                return self._cached[1]
            live = model_status(
                services.catalogue, services.router, services.sites, clock=services.startup_clock
            )
            try:
                traffic: list[TrafficRow] | None = await asyncio.wait_for(
                    recent_traffic(services.db, minutes=WINDOW_MINUTES), TRAFFIC_TIMEOUT_S
                )
            except (SQLAlchemyError, OSError, TimeoutError) as exc:
                log.warning("status page: traffic unavailable", extra={"reason": repr(exc)})
                traffic = None
            snap = assemble(live, traffic, datetime.now(UTC))
            self._cached = (self._clock(), snap)
            return snap

    def render(self, snapshot: Snapshot, *, authenticated: bool) -> str:
        rows = snapshot.rows
        return self._template.render(
            title=self.settings.title,
            refresh_s=self.settings.refresh_s,
            window_minutes=WINDOW_MINUTES,
            generated=snapshot.generated,
            overall=overall(snapshot),
            rows=rows,
            traffic_ok=snapshot.traffic_ok,
            authenticated=authenticated,
            models=len({r.model for r in rows}),
            clusters=len({r.cluster for r in rows if r.cluster}),
            requests=sum(r.requests for r in rows),
            errors=sum(r.errors for r in rows),
        )


async def get_status_page(request: Request) -> StatusPage:
    """This app's StatusPage, made at the first load (kept on app.state, like the services)."""
    page: StatusPage | None = getattr(request.app.state, "status_page", None)
    if page is None:
        services: Services = request.app.state.services
        page = request.app.state.status_page = StatusPage(services.settings.status_page)
    return page


StatusPageDep = Annotated[StatusPage, Depends(get_status_page)]


async def viewer(request: Request, page: StatusPageDep) -> Principal | None:
    """None when the page is public; otherwise the caller, authenticated as on the API."""
    if page.settings.public:
        return None
    return await current_principal(request)


@router.get("/status", response_class=HTMLResponse)
async def status_html(
    services: ServicesDep,
    page: StatusPageDep,
    principal: Annotated[Principal | None, Depends(viewer)],
) -> HTMLResponse:
    """Models x clusters: state, replicas, queue, in flight, and the last hour's traffic."""
    snapshot = (await page.snapshot(services)).visible_to(principal)
    html = page.render(snapshot, authenticated=principal is not None)
    cache = "no-cache" if principal is None else "private, no-cache"
    return HTMLResponse(html, headers={"Cache-Control": cache})


def _thousands(n: int) -> str:
    return f"{n:,}".replace(",", "\N{NARROW NO-BREAK SPACE}")  # 1 234 567, as SI writes it


def _ms(value: float | None) -> str:
    if value is None:
        return "\N{EM DASH}"
    nbsp = "\N{NO-BREAK SPACE}"
    return f"{value:.0f}{nbsp}ms" if value < 9_999.5 else f"{value / 1000:.1f}{nbsp}s"


def _pct(value: float | None) -> str:
    return "\N{EM DASH}" if value is None else f"{value:.1f}\N{NO-BREAK SPACE}%"
