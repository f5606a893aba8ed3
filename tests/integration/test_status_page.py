"""The status page of a real gateway, loaded in headless Chromium (Debian's chromium package).

Requests go through the gateway to a sim engine (successes, a request the engine refuses, one
no cluster can answer, one for an unknown model); then Chromium renders /status, the rendered
DOM is checked against what was sent, and a screenshot is kept as a test artifact
($HEARTH_TEST_ARTIFACTS, else test-artifacts/ at the repository root).
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.gateway.api.test_status_page import Element, PageRow, page_rows, parse_html
from tests.support.gateway import Gateway, Sim, start_gateway, upstream, wait_for
from tests.support.procs import free_port

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
WIDTH, HEIGHT = 1280, 900


@pytest.fixture(scope="module")
def chromium() -> str:
    found = shutil.which("chromium") or (CHROMIUM if os.access(CHROMIUM, os.X_OK) else None)
    if found is None:
        pytest.fail(
            "headless Chromium is needed to check the status page: run `scripts/setup.sh --dev` "
            "(as root; it installs Debian's chromium package) or `apt-get install chromium`"
        )
    return found


@pytest.fixture(scope="module")
def artifacts() -> Path:
    out = Path(os.environ.get("HEARTH_TEST_ARTIFACTS") or ROOT / "test-artifacts")
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def gw(logs: Path, sim: Sim, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """alpha: the sim engine (serves sim-model); beta: an upstream nobody listens on, said to
    serve sim-model and ghost. A failed upstream stays cooling (offline) for the whole test."""
    nobody = f"http://127.0.0.1:{free_port()}/v1"
    g = start_gateway(
        logs,
        clusters={
            "alpha": {"upstreams": [upstream(sim, "sim")]},
            "beta": {"upstreams": [{"name": "down", "url": nobody, "models": [sim.model, "ghost"]}]},
        },
        store_url=f"sqlite:///{tmp_path_factory.mktemp('status-page') / 'hearth.db'}",
        relay={"failure_cooldown_s": 600, "connect_timeout_s": 1},
        status_page={"refresh_s": 5, "title": "Hearth test centre"},
    )
    yield g
    g.stop()


def run_chromium(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [
        chromium, "--headless=new", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
        f"--window-size={WIDTH},{HEIGHT}", *args,
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"chromium exited {done.returncode}: {done.stderr[-2000:]}"
    return done


def test_status_page_in_headless_chromium(
    gw: Gateway, sim: Sim, chromium: str, artifacts: Path, tmp_path: Path
) -> None:
    client = gw.client()
    prompt_tokens = completion_tokens = 0
    for i in range(4):
        done = client.chat.completions.create(
            model=sim.model, messages=[{"role": "user", "content": f"hello {i}"}], max_tokens=5 + i
        )
        assert done.usage is not None
        prompt_tokens += done.usage.prompt_tokens
        completion_tokens += done.usage.completion_tokens
    for _ in range(2):  # the engine refuses it (longer than its context): 400, passed through
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(
                model=sim.model, messages=[{"role": "user", "content": "too long"}], max_tokens=1_000_000
            )
    with pytest.raises(openai.APIStatusError) as refused:  # only on beta, where nothing listens
        client.chat.completions.create(model="ghost", messages=[{"role": "user", "content": "boo"}])
    assert refused.value.status_code == 502
    with pytest.raises(openai.NotFoundError):  # unknown: refused before routing, so no row
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "?"}])

    def recorded() -> bool:  # usage is written in the background; the page caches for 5 s
        rows = page_rows(parse_html(httpx.get(f"{gw.root}/status", timeout=10).text))
        return ("sim-model", "alpha") in rows and rows["sim-model", "alpha"].int("requests") == 6

    assert wait_for(recorded, timeout=20), "the status page never showed the requests sent"

    url = f"{gw.root}/status"
    dom = run_chromium(chromium, tmp_path / "profile", "--dump-dom", url).stdout
    page = parse_html(dom)
    check_page(page, prompt_tokens, completion_tokens)

    shot = artifacts / "status-page.png"
    shot.unlink(missing_ok=True)
    run_chromium(chromium, tmp_path / "profile", f"--screenshot={shot}", url)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{shot} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk comes first
    assert (width, height) == (WIDTH, HEIGHT)
    assert len(data) > 20_000, f"{shot} is {len(data)} bytes: a blank page?"


def check_page(page: Element, prompt_tokens: int, completion_tokens: int) -> None:
    assert page.find("h1").text() == "Hearth test centre"
    rows = page_rows(page)
    assert list(rows) == [("ghost", "beta"), ("ghost", ""), ("sim-model", "alpha"), ("sim-model", "beta")]
    assert not [key for key in rows if key[0] == "no-such-model"]

    def numbers(row: PageRow, *columns: str) -> list[int]:
        return [row.int(c) for c in columns]

    hot = rows["sim-model", "alpha"]
    assert (hot.state, hot.text("state"), hot.text("cluster")) == ("hot", "hot", "alpha")
    assert numbers(hot, "ready", "starting", "queued", "in-flight") == [1, 0, 0, 0]
    assert numbers(hot, "requests", "errors", "prompt-tokens", "completion-tokens") == [
        6, 2, prompt_tokens, completion_tokens,
    ]  # fmt: skip
    assert completion_tokens == 5 + 6 + 7 + 8  # the sim writes max_tokens
    assert float(hot.value("error-rate")) == pytest.approx(100 * 2 / 6, abs=0.01)
    assert hot.text("error-rate") == "33.3 %"
    assert float(hot.value("latency")) > 0
    assert hot.text("latency").endswith(" ms")

    for key in (("sim-model", "beta"), ("ghost", "beta")):  # the dead upstream failed: cooling
        row = rows[key]
        assert (row.state, row.text("state")) == ("offline", "offline"), key
        assert numbers(row, "ready", "requests", "errors") == [0, 0, 0], key

    lost = rows["ghost", ""]  # the 502: recorded without a cluster
    assert (lost.state, lost.text("state"), lost.text("cluster")) == ("unrouted", "not routed", "none")
    assert numbers(lost, "requests", "errors", "prompt-tokens", "completion-tokens") == [1, 1, 0, 0]
    assert lost.value("error-rate") == "100.00"

    head = page.find(cls="overall")
    assert head.attrs["data-state"] == "degraded"
    assert "1 of 2 models cannot be served: ghost" in head.text()
    totals = page.find(cls="totals")
    assert (totals.attrs["data-requests"], totals.attrs["data-errors"]) == ("7", "3")
    assert page.find("html").attrs["lang"] == "en"
