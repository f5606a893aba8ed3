"""GET /status: the app from create_app(settings), in-process (httpx ASGITransport, real lifespan),
on a SQLite store; traffic is written through the gateway's own usage recorder."""

from __future__ import annotations

import fnmatch
import tomllib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from gateway.api.status_page import CACHE_MAX_S, Row, Snapshot, StatusPage, assemble, overall
from gateway.app import create_app
from gateway.auth.principal import Principal
from gateway.config import ConfigError, StatusPageSettings, load_settings
from gateway.services import Services
from gateway.store.reports import TrafficRow
from gateway.store.usage import UsageRecord
from tests.support.procs import free_port

ROOT = Path(__file__).resolve().parents[3]
ADMIN_KEY = "sk-status-admin"
M1_KEY = "sk-status-only-m1"
STATE_LABELS = {"hot", "starting", "queued", "cold", "offline", "not routed"}


# ---------------------------------------------------------------- reading the page


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    children: list[Element | str] = field(default_factory=list)

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def text(self) -> str:
        """The text a screen reader says: aria-hidden decoration left out, whitespace collapsed."""
        parts = [
            c if isinstance(c, str) else c.text() for c in self.children
            if isinstance(c, str) or c.attrs.get("aria-hidden") != "true"
        ]  # fmt: skip
        return " ".join(" ".join(parts).split())

    def iter(self) -> Iterator[Element]:
        yield self
        for c in self.children:
            if isinstance(c, Element):
                yield from c.iter()

    def find_all(self, tag: str | None = None, cls: str | None = None) -> list[Element]:
        return [e for e in self.iter() if (tag is None or e.tag == tag) and (cls is None or cls in e.classes)]

    def find(self, tag: str | None = None, cls: str | None = None) -> Element:
        found = self.find_all(tag, cls)
        assert found, f"no <{tag or '*'} class={cls!r}> in the page"
        return found[0]


_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {})
        self._open = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs})
        self._open[-1].children.append(element)
        if tag not in _VOID:
            self._open.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._open[-1].children.append(Element(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self._open) - 1, 0, -1):
            if self._open[i].tag == tag:
                del self._open[i:]
                return

    def handle_data(self, data: str) -> None:
        self._open[-1].children.append(data)


def parse_html(html: str) -> Element:
    builder = _TreeBuilder()
    builder.feed(html)
    builder.close()
    return builder.root


@dataclass
class PageRow:
    state: str  # the row's data-state
    cells: dict[str, Element]  # by column class: model, cluster, state, ready, ... latency

    def text(self, column: str) -> str:
        return self.cells[column].text()

    def value(self, column: str) -> str:
        return self.cells[column].attrs["data-value"]

    def int(self, column: str) -> int:
        return int(self.value(column))


COLUMNS = (
    "model", "cluster", "state", "ready", "starting", "queued", "in-flight", "requests", "errors",
    "error-rate", "prompt-tokens", "completion-tokens", "latency",
)  # fmt: skip


def page_rows(page: Element) -> dict[tuple[str, str], PageRow]:
    """The table's rows by (data-model, data-cluster); every row must have every column once."""
    rows: dict[tuple[str, str], PageRow] = {}
    for tr in page.find_all("tr"):
        if "data-model" not in tr.attrs:
            continue
        cells = [c for c in tr.children if isinstance(c, Element) and c.tag in ("th", "td")]
        by_class = {col: c for c in cells for col in COLUMNS if col in c.classes}
        assert len(cells) == len(COLUMNS) == len(by_class), f"row {tr.attrs}: {[c.classes for c in cells]}"
        key = (tr.attrs["data-model"], tr.attrs["data-cluster"])
        assert key not in rows, f"two rows for {key}"
        rows[key] = PageRow(tr.attrs["data-state"], by_class)
    return rows


# ---------------------------------------------------------------- the app under test


@asynccontextmanager
async def gateway(tmp_path: Path, **status_page: Any) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """A gateway whose clusters list their models (nothing is asked over the network):
    alpha serves m1 and m2, beta serves m1."""
    nobody = f"http://127.0.0.1:{free_port()}/v1"
    settings = load_settings(
        None,
        server={"access_log": False},
        store={"url": f"sqlite:///{tmp_path / 'hearth.db'}"},
        auth={
            "api_keys": [
                {"owner": "ops", "key": ADMIN_KEY},
                {"owner": "m1-only", "key": M1_KEY, "models": ["m1"]},
            ]
        },
        relay={"failure_cooldown_s": 600},
        clusters={
            "alpha": {"upstreams": [{"name": "a0", "url": nobody, "models": ["m1", "m2"]}]},
            "beta": {"upstreams": [{"name": "b0", "url": nobody, "models": ["m1"]}]},
        },
        status_page=status_page,
    )
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client,
    ):
        yield app, client


def services_of(app: FastAPI) -> Services:
    services: Services = app.state.services
    return services


def record(
    services: Services,
    model: str,
    cluster: str,
    status: int = 200,
    prompt: int = 0,
    completion: int = 0,
    latency_ms: float = 100.0,
    age: timedelta = timedelta(minutes=1),
) -> None:
    services.usage.record(
        UsageRecord(
            ts=datetime.now(UTC) - age, request_id="r", user="someone", api_key_id=None, model=model,
            cluster=cluster, upstream=f"{cluster}/0" if cluster else "", endpoint="chat.completions",
            status=status, prompt_tokens=prompt, completion_tokens=completion, latency_ms=latency_ms,
            ttft_ms=None, stream=False,
        )
    )  # fmt: skip


async def load(client: httpx.AsyncClient, key: str | None = None) -> tuple[httpx.Response, Element]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    resp = await client.get("/status", headers=headers)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "text/html; charset=utf-8"
    return resp, parse_html(resp.text)


# ---------------------------------------------------------------- tests


async def test_rows_show_live_state_and_last_hour_traffic(tmp_path: Path) -> None:
    async with gateway(tmp_path) as (app, client):
        services = services_of(app)
        (m1_alpha,) = [d for d in services.catalogue.deployments("m1") if d.upstream.cluster == "alpha"]
        (m1_beta,) = [d for d in services.catalogue.deployments("m1") if d.upstream.cluster == "beta"]
        services.router.begin(m1_alpha)  # two requests in flight on alpha
        services.router.begin(m1_alpha)
        services.router.failed(m1_beta)  # beta's only upstream failed: cooling for 600 s
        record(services, "m1", "alpha", 200, prompt=10, completion=5, latency_ms=100)
        record(services, "m1", "alpha", 200, prompt=20, completion=7, latency_ms=200)
        record(services, "m1", "alpha", 500, latency_ms=300)
        record(services, "m1", "", 503, latency_ms=2)  # no cluster could answer
        record(
            services, "retired", "alpha", 200, prompt=1_234_567, completion=4, latency_ms=12_345
        )  # not served now
        record(services, "m2", "alpha", 200, prompt=99, completion=99, age=timedelta(minutes=61))  # too old
        await services.usage.flush()

        _, page = await load(client)

    rows = page_rows(page)
    assert list(rows) == [
        ("m1", "alpha"), ("m1", "beta"), ("m1", ""), ("m2", "alpha"), ("retired", "alpha"),
    ]  # fmt: skip
    a = rows["m1", "alpha"]
    assert (a.state, a.text("state"), a.text("model"), a.text("cluster")) == ("hot", "hot", "m1", "alpha")
    assert [a.int(c) for c in ("ready", "starting", "queued", "in-flight")] == [1, 0, 0, 2]
    assert [a.int(c) for c in ("requests", "errors", "prompt-tokens", "completion-tokens")] == [3, 1, 30, 12]
    assert float(a.value("error-rate")) == pytest.approx(33.33, abs=0.01)
    assert a.text("error-rate") == "33.3 %"
    assert float(a.value("latency")) == pytest.approx(200.0)
    assert a.text("latency") == "200 ms"

    b = rows["m1", "beta"]
    assert (b.state, b.text("state"), b.int("ready"), b.int("requests")) == ("offline", "offline", 0, 0)
    assert b.value("error-rate") == b.value("latency") == ""  # nothing to divide: a dash, not 0
    assert b.text("latency") == b.text("error-rate") == "\N{EM DASH}"

    unrouted = rows["m1", ""]
    assert (unrouted.state, unrouted.text("state"), unrouted.text("cluster")) == (
        "unrouted",
        "not routed",
        "none",
    )
    assert (unrouted.int("requests"), unrouted.int("errors"), unrouted.value("error-rate")) == (
        1,
        1,
        "100.00",
    )

    m2 = rows["m2", "alpha"]
    assert (m2.state, m2.int("ready"), m2.int("requests"), m2.int("prompt-tokens")) == ("hot", 1, 0, 0)

    retired = rows["retired", "alpha"]
    assert (retired.state, retired.int("ready"), retired.int("requests")) == ("offline", 0, 1)
    assert (retired.int("prompt-tokens"), retired.int("completion-tokens")) == (1_234_567, 4)
    assert (retired.text("prompt-tokens"), retired.text("latency")) == ("1 234 567", "12.3 s")

    head = page.find(cls="overall")
    assert head.attrs["data-state"] == "degraded"
    assert "1 of 3 models cannot be served: retired" in head.text()
    totals = page.find(cls="totals")
    assert (totals.attrs["data-requests"], totals.attrs["data-errors"]) == ("5", "2")
    assert (totals.attrs["data-models"], totals.attrs["data-clusters"]) == ("3", "2")


async def test_page_is_plain_accessible_html(tmp_path: Path) -> None:
    async with gateway(tmp_path, refresh_s=7, title="ALCF inference") as (app, client):
        resp, page = await load(client)
    assert resp.headers["cache-control"] == "no-cache"
    assert resp.headers["x-request-id"]
    assert page.find("html").attrs["lang"] == "en"
    (refresh,) = [m for m in page.find_all("meta") if m.attrs.get("http-equiv") == "refresh"]
    assert refresh.attrs["content"] == "7"
    assert page.find("title").text().startswith("ALCF inference")
    assert page.find("h1").text() == "ALCF inference"
    assert not page.find_all("script"), "the page needs no JavaScript"
    assert not [e for e in page.iter() if any(a.startswith("on") for a in e.attrs)]

    table = page.find("table")
    assert table.find("caption").text()
    headers = table.find_all("th")
    assert headers
    assert all(th.attrs.get("scope") in ("col", "colgroup", "row") for th in headers)
    assert {th.text() for th in table.find("thead").find_all("th")} >= {
        "Model",
        "Cluster",
        "State",
        "Mean latency",
    }
    rows = page_rows(page)
    assert set(rows) == {("m1", "alpha"), ("m1", "beta"), ("m2", "alpha")}
    for row in rows.values():  # the model is each row's header; the state is said, not only coloured
        assert (row.cells["model"].tag, row.cells["model"].attrs["scope"]) == ("th", "row")
        assert row.text("state") in STATE_LABELS
        assert f"state-{row.state}" in row.cells["state"].find(cls="badge").classes

    stamp = page.find("header").find("time")
    generated = datetime.strptime(stamp.attrs["datetime"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert abs(datetime.now(UTC) - generated) < timedelta(minutes=1)
    assert stamp.text().endswith(" UTC")
    assert page.find(cls="overall").attrs["data-state"] == "operational"

    links = {urljoin("http://gateway/status", a.attrs["href"]) for a in page.find("footer").find_all("a")}
    assert links == {"http://gateway/v1/status", "http://gateway/metrics"}
    assert {"/v1/status", "/metrics", "/status"} <= set(app.openapi()["paths"])  # they lead somewhere


async def test_names_are_escaped(tmp_path: Path) -> None:
    evil = '<img src=x onerror="alert(1)">'
    async with gateway(tmp_path) as (app, client):
        record(services_of(app), evil, "alpha", 200)
        await services_of(app).usage.flush()
        resp, page = await load(client)
    assert evil not in resp.text
    assert not page.find_all("img")
    assert page_rows(page)[evil, "alpha"].text("model") == evil


async def test_page_data_is_reused_for_the_cache_interval(tmp_path: Path) -> None:
    now = [1000.0]
    async with gateway(tmp_path, refresh_s=3) as (app, client):
        services = services_of(app)
        page = StatusPage(services.settings.status_page, clock=lambda: now[0])
        app.state.status_page = page
        assert page.ttl_s == 3

        _, first = await load(client)
        record(services, "m2", "alpha", 200, prompt=1, completion=1)
        await services.usage.flush()
        now[0] += 2.9  # within the interval: the same figures, the same time stamp
        _, second = await load(client)
        assert page_rows(second)["m2", "alpha"].int("requests") == 0
        assert second.find("time").attrs == first.find("time").attrs

        now[0] += 0.2  # past it: assembled again
        _, third = await load(client)
        assert page_rows(third)["m2", "alpha"].int("requests") == 1

    assert StatusPage(StatusPageSettings(refresh_s=60)).ttl_s == CACHE_MAX_S


async def test_private_page_needs_a_credential_and_shows_what_it_may_use(tmp_path: Path) -> None:
    async with gateway(tmp_path, public=False) as (app, client):
        record(services_of(app), "m2", "alpha", 200, prompt=5, completion=5)
        record(services_of(app), "m1", "beta", 200, prompt=1, completion=2)
        await services_of(app).usage.flush()

        anonymous = await client.get("/status")
        assert anonymous.status_code == 401
        assert anonymous.json()["error"]["code"] == "missing_api_key"
        wrong = await client.get("/status", headers={"Authorization": "Bearer sk-nope"})
        assert wrong.status_code == 401

        resp, page = await load(client, M1_KEY)
        assert resp.headers["cache-control"] == "private, no-cache"
        assert set(page_rows(page)) == {("m1", "alpha"), ("m1", "beta")}
        assert page.find(cls="totals").attrs["data-requests"] == "1"  # m2's traffic is not theirs to see
        assert "your credential may use" in page.find(cls="totals").text()

        _, page = await load(client, ADMIN_KEY)
        assert set(page_rows(page)) == {("m1", "alpha"), ("m1", "beta"), ("m2", "alpha")}


async def test_public_page_shows_no_users(tmp_path: Path) -> None:
    async with gateway(tmp_path) as (app, client):
        record(services_of(app), "m1", "alpha", 200)
        await services_of(app).usage.flush()
        resp, _ = await load(client)
    assert "someone" not in resp.text  # the user of every recorded request
    assert "your credential" not in resp.text


async def test_a_store_that_fails_degrades_the_page_not_breaks_it(tmp_path: Path) -> None:
    async with gateway(tmp_path) as (app, client):
        async with services_of(app).db.engine.begin() as conn:
            await conn.execute(text("DROP TABLE usage_events"))
        _, page = await load(client)
    assert page.find(cls="overall").attrs["data-state"] == "degraded"
    assert "Traffic figures are unavailable" in page.find(cls="overall").text()
    assert page.find(cls="traffic-unavailable")
    rows = page_rows(page)
    assert set(rows) == {("m1", "alpha"), ("m1", "beta"), ("m2", "alpha")}
    assert rows["m1", "alpha"].state == "hot"


def test_overall_state() -> None:
    now = datetime.now(UTC)

    def snap(*states: tuple[str, str], traffic_ok: bool = True) -> Snapshot:
        return Snapshot(now, tuple(Row(m, "c", s) for m, s in states), traffic_ok)

    assert overall(snap()).state == "down"
    assert overall(snap(("a", "offline"), ("b", "offline"))).state == "down"
    assert overall(snap(("a", "offline"), ("a", "cold"))).state == "operational"  # cold starts on demand
    mixed = overall(snap(("a", "hot"), ("b", "offline"), ("b", "unrouted")))
    assert (mixed.state, mixed.summary) == ("degraded", "1 of 2 models cannot be served: b.")
    assert overall(snap(("a", "hot"), traffic_ok=False)).state == "degraded"
    assert overall(snap(("a", "queued"), ("b", "starting"))).summary == "All 2 models can be served."


def test_assemble_joins_live_state_and_traffic() -> None:
    live = [
        {
            "model": "m",
            "clusters": [
                {"cluster": "x", "state": "cold", "ready": 0, "starting": 0, "queued": 2, "in_flight": 0}
            ],
        }
    ]
    traffic = [TrafficRow("m", "x", 4, 1, 40, 30, 12.5), TrafficRow("gone", "y", 1, 0, 1, 1, 3.0)]
    snap = assemble(live, traffic, datetime.now(UTC))
    assert snap.rows == (
        Row("gone", "y", "offline", requests=1, prompt_tokens=1, completion_tokens=1, mean_latency_ms=3.0),
        Row(
            "m",
            "x",
            "cold",
            queued=2,
            requests=4,
            errors=1,
            prompt_tokens=40,
            completion_tokens=30,
            mean_latency_ms=12.5,
        ),
    )
    assert snap.rows[1].error_pct == 25.0
    assert assemble(live, None, datetime.now(UTC)).traffic_ok is False


def test_visible_to_filters_models_and_clusters() -> None:
    rows = tuple(Row(m, c, "hot") for m in ("m1", "m2") for c in ("alpha", "beta", ""))
    snap = Snapshot(datetime.now(UTC), rows, True)
    viewer = Principal("u", models=frozenset({"m1"}), blocked_clusters={"beta": "not for you"})
    assert [(r.model, r.cluster) for r in snap.visible_to(viewer).rows] == [("m1", "alpha"), ("m1", "")]
    assert snap.visible_to(None) is snap


def test_template_ships_in_the_wheel() -> None:
    template = ROOT / "gateway" / "templates" / "status.html.j2"
    assert template.is_file()
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    relative = template.relative_to(ROOT / "gateway").as_posix()
    assert any(fnmatch.fnmatch(relative, pattern) for pattern in data["gateway"]), data["gateway"]


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEARTH_STATUS_PAGE__PUBLIC", "false")
    monkeypatch.setenv("HEARTH_STATUS_PAGE__REFRESH_S", "30")
    settings = load_settings(None)
    assert (settings.status_page.public, settings.status_page.refresh_s) == (False, 30)
    assert settings.status_page.title == "Hearth status"
    monkeypatch.setenv("HEARTH_STATUS_PAGE__REFRESH_S", "0")
    with pytest.raises(ConfigError, match=r"status_page\.refresh_s"):
        load_settings(None)
