"""`hearth keys create / list / revoke` on a SQLite store, `parse_expiry`, and the keys the CLI
makes working (or not) on a real gateway that shares the store."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import typer
import yaml
from typer.testing import CliRunner, Result

from endpoints.launcher import LocalProcess, sim_argv
from gateway.auth.keys import parse_key
from gateway.cli import app, parse_expiry
from gateway.store.database import Database
from gateway.store.keys import KeyStore
from tests.support.gateway import Gateway, Sim, start_gateway, upstream
from tests.support.procs import free_port

KEY = re.compile(r"hth_[a-z2-7]{12}_[A-Za-z0-9_-]{43}")
COLUMNS = ["id", "name", "owner", "created", "expires", "last used", "state"]


@dataclass
class Store:
    config: Path  # a hearth.yaml naming the store
    url: str


def make_store(directory: Path) -> Store:
    url = f"sqlite:///{directory / 'hearth.db'}"
    config = directory / "hearth.yaml"
    config.write_text(yaml.safe_dump({"store": {"url": url}}))
    return Store(config, url)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return make_store(tmp_path)


def hearth(store: Store, *args: str) -> Result:
    # A wide terminal, so that rich never wraps or truncates table cells.
    return CliRunner().invoke(app, [*args, "--config", str(store.config)], env={"COLUMNS": "250"})


def ok(result: Result) -> str:
    assert result.exception is None, result.output
    assert result.exit_code == 0, result.output
    return result.output


def create(store: Store, owner: str = "alice", *args: str) -> tuple[str, str, str]:
    """(key id, plaintext, output) of `hearth keys create`."""
    output = ok(hearth(store, "keys", "create", "--owner", owner, *args))
    (plaintext,) = KEY.findall(output)
    key_id = parse_key(plaintext)
    assert key_id is not None
    return key_id, plaintext, output


def rows(store: Store, *args: str) -> dict[str, dict[str, str]]:
    """`hearth keys list` parsed: key id -> {column: cell}."""
    output = ok(hearth(store, "keys", "list", *args))
    table = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip().strip("│").split("│")]
        if line.startswith("│") and len(cells) == len(COLUMNS):
            row = dict(zip(COLUMNS, cells, strict=True))
            table[row["id"]] = row
    return table


# --- keys create / list / revoke ----------------------------------------------------------


def test_create_shows_the_key_once(store: Store) -> None:
    key_id, plaintext, output = create(store, "alice", "--name", "laptop")
    assert output.count(plaintext) == 1
    assert f"Created key {key_id} for alice (laptop)." in output
    assert "cannot be shown again" in output

    listing = ok(hearth(store, "keys", "list"))
    assert plaintext not in listing
    assert plaintext[17:] not in listing
    row = rows(store)[key_id]
    assert (row["name"], row["owner"], row["state"], row["expires"], row["last used"]) == (
        "laptop",
        "alice",
        "active",
        "-",
        "-",
    )
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d", row["created"])


def test_each_key_is_new(store: Store) -> None:
    first = create(store)
    second = create(store)
    assert first[0] != second[0]
    assert first[1] != second[1]
    assert set(rows(store)) == {first[0], second[0]}


def test_list_by_owner(store: Store) -> None:
    alice, _, _ = create(store, "alice")
    bob, _, _ = create(store, "bob")
    assert set(rows(store, "--owner", "bob")) == {bob}
    assert set(rows(store)) == {alice, bob}


def test_expires_in_days(store: Store) -> None:
    before = datetime.now(UTC) + timedelta(days=30)
    key_id, _, output = create(store, "alice", "--expires", "30d")
    after = datetime.now(UTC) + timedelta(days=30)
    shown = {f"{t:%Y-%m-%d %H:%M}" for t in (before, after)}
    assert rows(store)[key_id]["expires"] in shown
    assert any(f"expires {s} UTC" in output for s in shown)


def test_expires_on_a_date(store: Store) -> None:
    key_id, _, output = create(store, "alice", "--expires", "2099-01-01")
    assert "expires 2099-01-01 00:00 UTC" in output
    assert rows(store)[key_id]["expires"] == "2099-01-01 00:00"


@pytest.mark.parametrize(
    ("expires", "message"),
    [("soon", "is not a duration like 30d"), ("2000-01-01", "is in the past"), ("-3d", "not a duration")],
)
def test_bad_expiry_is_a_usage_error(store: Store, expires: str, message: str) -> None:
    result = hearth(store, "keys", "create", "--owner", "alice", "--expires", expires)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not KEY.search(result.output)
    assert rows(store) == {}


def test_zero_expiry_is_a_usage_error(store: Store) -> None:
    result = hearth(store, "keys", "create", "--owner", "alice", "--expires", "0d")
    assert result.exit_code == 2, result.output
    assert not isinstance(result.exception, ValueError)


def test_revoke(store: Store) -> None:
    key_id, _, _ = create(store)
    kept, _, _ = create(store)
    assert f"Revoked {key_id}." in ok(hearth(store, "keys", "revoke", key_id))
    assert set(rows(store)) == {kept}  # revoked keys are hidden by default
    listed = rows(store, "--all")
    assert (listed[key_id]["state"], listed[kept]["state"]) == ("revoked", "active")


def test_create_and_revoke_are_audited(store: Store) -> None:
    import getpass
    import sqlite3

    key_id, plaintext, _ = create(store, "alice")
    ok(hearth(store, "keys", "revoke", key_id))
    with sqlite3.connect(store.url.removeprefix("sqlite:///")) as db:
        audit = db.execute("SELECT actor, action, target, detail FROM audit_events ORDER BY id").fetchall()
    actor = f"cli:{getpass.getuser()}"
    assert [(a, act, t) for a, act, t, _ in audit] == [
        (actor, "key.create", key_id),
        (actor, "admin.key.revoke", key_id),
    ]
    assert all(plaintext not in (d or "") for *_, d in audit)


def test_revoke_twice(store: Store) -> None:
    key_id, _, _ = create(store)
    ok(hearth(store, "keys", "revoke", key_id))
    assert "already revoked" in ok(hearth(store, "keys", "revoke", key_id))
    assert rows(store, "--all")[key_id]["state"] == "revoked"


def test_revoke_unknown_key(store: Store) -> None:
    create(store)
    result = hearth(store, "keys", "revoke", "aaaaaaaaaaaa")
    assert result.exit_code == 1
    assert "aaaaaaaaaaaa" in result.output
    assert "Revoked" not in result.output


def test_missing_config_file(tmp_path: Path) -> None:
    result = hearth(Store(tmp_path / "nope.yaml", ""), "keys", "list")
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_invalid_config_file(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store.config.write_text("store: {url: 5, bogus: 1}\n")
    result = hearth(store, "keys", "list")
    assert result.exit_code == 2
    assert "store.bogus" in result.output


@pytest.mark.parametrize("owner", ["dependabot[bot]", "ops[/]"])
def test_owner_is_shown_verbatim(store: Store, owner: str) -> None:
    key_id, _, output = create(store, owner)
    assert f"for {owner} (default)" in output
    assert rows(store)[key_id]["owner"] == owner


def test_demo_worker_key_may_start_with_a_dash() -> None:
    port = free_port()
    worker = LocalProcess(
        sim_argv(model="sim-model", port=port, api_key="-Zx9_worker-key"),
        f"http://127.0.0.1:{port}/health",
        quiet=True,
    )
    try:
        worker.start(timeout_s=30)
    finally:
        worker.stop()


# --- parse_expiry -------------------------------------------------------------------------

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "delta"),
    [
        ("45s", timedelta(seconds=45)),
        ("90m", timedelta(minutes=90)),
        ("12h", timedelta(hours=12)),
        ("30d", timedelta(days=30)),
        ("2w", timedelta(weeks=2)),
        (" 7D ", timedelta(days=7)),
        ("3 h", timedelta(hours=3)),
    ],
)
def test_parse_expiry_durations(text: str, delta: timedelta) -> None:
    assert parse_expiry(text, NOW) == NOW + delta


def test_parse_expiry_dates() -> None:
    assert parse_expiry("2031-01-02", NOW) == datetime(2031, 1, 2, tzinfo=UTC)  # naive: UTC
    assert parse_expiry("2031-01-02T03:04:05", NOW) == datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC)
    with_zone = parse_expiry("2031-01-02T03:00:00+02:00", NOW)
    assert with_zone == datetime(2031, 1, 2, 1, 0, tzinfo=UTC)
    assert with_zone.utcoffset() == timedelta(hours=2)


def test_parse_expiry_defaults_to_now() -> None:
    assert abs(parse_expiry("1h") - (datetime.now(UTC) + timedelta(hours=1))) < timedelta(seconds=5)


@pytest.mark.parametrize(
    "text", ["soon", "", "1.5h", "5y", "-1d", "d30", "2030-06-01T11:59:59", "2030-06-01"]
)
def test_parse_expiry_rejects(text: str) -> None:
    with pytest.raises(typer.BadParameter):
        parse_expiry(text, NOW)


@pytest.mark.parametrize("text", ["0s", "0d"])
def test_parse_expiry_rejects_zero(text: str) -> None:
    with pytest.raises(typer.BadParameter):
        parse_expiry(text, NOW)


# --- the CLI's keys on a real gateway -----------------------------------------------------


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Store:
    return make_store(tmp_path_factory.mktemp("cli-gateway"))


@pytest.fixture(scope="module")
def key_gateway(logs: Path, sim: Sim, shared: Store) -> Iterator[Gateway]:
    """A gateway on the CLI's store that asks the store on every request (no key cache)."""
    gw = start_gateway(
        logs,
        clusters={"local": {"upstreams": [upstream(sim, "sim")]}},
        store_url=shared.url,
        auth={"key_cache_ttl_s": 0, "negative_cache_ttl_s": 0},
    )
    yield gw
    gw.stop()


def get_models(gw: Gateway, key: str) -> httpx.Response:
    return httpx.get(f"{gw.url}/models", headers={"Authorization": f"Bearer {key}"}, timeout=10)


def test_cli_key_works_until_revoked(key_gateway: Gateway, shared: Store, sim: Sim) -> None:
    key_id, plaintext, _ = create(shared, "carol")
    resp = get_models(key_gateway, plaintext)
    assert resp.status_code == 200, resp.text
    assert sim.model in [m["id"] for m in resp.json()["data"]]
    assert rows(shared, "--owner", "carol")[key_id]["last used"] != "-"

    ok(hearth(shared, "keys", "revoke", key_id))
    resp = get_models(key_gateway, plaintext)
    assert resp.status_code == 401
    assert resp.json()["error"]["code"] == "invalid_api_key"


def test_wrong_secret_and_unknown_key(key_gateway: Gateway, shared: Store) -> None:
    _, plaintext, _ = create(shared, "dave")
    tampered = plaintext[:-1] + ("A" if plaintext[-1] != "A" else "B")
    assert get_models(key_gateway, tampered).status_code == 401
    assert get_models(key_gateway, f"hth_{'a' * 12}_{'b' * 43}").status_code == 401
    assert get_models(key_gateway, plaintext).status_code == 200


def test_expired_key_is_refused(key_gateway: Gateway, shared: Store) -> None:
    async def insert_expired() -> tuple[str, str]:
        db = Database(shared.url)
        try:
            an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
            keys = KeyStore(db, clock=lambda: an_hour_ago)  # made an hour ago, for a minute
            info, plaintext = await keys.create("erin", "short", an_hour_ago + timedelta(minutes=1))
            return info.id, plaintext
        finally:
            await db.close()

    key_id, plaintext = asyncio.run(insert_expired())
    resp = get_models(key_gateway, plaintext)
    assert resp.status_code == 401
    assert resp.json()["error"]["code"] == "invalid_api_key"
    assert rows(shared, "--owner", "erin")[key_id]["state"] == "expired"
