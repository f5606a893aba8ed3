"""The real `hearth` command, as a subprocess, signing in through the real globus_sdk against the
loopback Globus Auth stand-in, and using a gateway with the login.

Two gateways: the real one (`hearth serve` with Globus Auth configured), and, for answers the
real one cannot be made to give on demand (a Globus Auth requirements error), `FakeGateway`
below — a few routes serving the documented contract of /v1/auth/config, /v1/whoami and
/v1/keys, defined and used only in this file.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import globus_sdk
import httpx
import openai
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tests.support.gateway import Gateway, Sim, start_gateway, upstream
from tests.support.globus_auth import GlobusAuthStandIn, Identity, ResourceServer
from tests.support.threaded_server import ThreadedServer

pytestmark = pytest.mark.timeout(120)

HEARTH = Path(sys.executable).with_name("hearth")  # the console script of this environment
NOT_LOGGED_IN = "error: not logged in: run `hearth login --gateway URL`\n"


@dataclass
class World:
    globus: GlobusAuthStandIn
    rs: ResourceServer
    native: str
    alice: Identity
    admin: Identity
    policy: str

    def introspect(self, token: str) -> dict[str, Any]:
        client = globus_sdk.ConfidentialAppAuthClient(
            self.rs.client_id, self.rs.secret, base_url=self.globus.url + "/"
        )
        return dict(client.oauth2_token_introspect(token).data)


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with GlobusAuthStandIn() as g:
        alice = g.add_identity("alice@anl.gov", name="Alice")
        g.link(alice, g.add_identity("alice@gmail.com"))
        yield World(
            globus=g,
            rs=g.add_resource_server(),
            native=g.add_native_client(),
            alice=alice,
            admin=g.add_identity("root@anl.gov", name="Root"),
            policy=g.add_policy(domains=("anl.gov",)),
        )


@pytest.fixture
def globus(world: World) -> Iterator[GlobusAuthStandIn]:
    """The stand-in with Alice signed in to the browser, its counters at zero."""
    world.globus.browser_user = world.alice
    world.globus.reset_calls()
    yield world.globus
    world.globus.failure = None


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    return tmp_path / "config" / "hearth"  # not there yet: `hearth login` makes it


# --- running hearth -------------------------------------------------------------------------


def environment(config_dir: Path, globus: GlobusAuthStandIn) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HEARTH_", "GLOBUS_SDK_"))}
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    return {**env, **globus.env, "HEARTH_CONFIG_DIR": str(config_dir), "COLUMNS": "250"}


def hearth(config_dir: Path, globus: GlobusAuthStandIn, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HEARTH), *args],
        env=environment(config_dir, globus),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def login(
    config_dir: Path, globus: GlobusAuthStandIn, gateway: str, *extra: str, code: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`hearth login --no-browser`: read the URL it prints, "sign in" at the stand-in, paste the code."""
    proc = subprocess.Popen(
        [str(HEARTH), "login", "--gateway", gateway, "--no-browser", *extra],
        env=environment(config_dir, globus),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdin is not None
    shown = []
    try:
        for line in proc.stdout:
            shown.append(line)
            if line.startswith(globus.url + "/v2/oauth2/authorize?"):
                break
        else:
            proc.wait(timeout=30)
            err = proc.stderr.read() if proc.stderr else ""
            return subprocess.CompletedProcess(proc.args, proc.returncode, "".join(shown), err)
        url = shown[-1].strip()
        redirect = httpx.get(url, follow_redirects=False)  # the browser: sign in, consent, redirect
        assert redirect.status_code == 302, redirect.text
        location = urlsplit(redirect.headers["location"])
        assert location.path == "/v2/web/auth-code"  # the page that shows the user the code
        real_code = parse_qs(location.query)["code"][0]
        # Not communicate(): it reads the pipes beneath the text buffer that the loop above filled.
        proc.stdin.write((code if code is not None else real_code) + "\n")
        proc.stdin.close()
        out = proc.stdout.read()
        err = proc.stderr.read() if proc.stderr else ""
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, "".join(shown) + out, err)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"stdout: {result.stdout}\nstderr: {result.stderr}"
    return result.stdout


def stored(config_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((config_dir / "login.json").read_text())
    return data


def age_tokens(config_dir: Path) -> None:
    """Move the stored access token's expiry into the past, as the passing of two days would."""
    path = config_dir / "login.json"
    data = json.loads(path.read_text())
    data["tokens"]["expires_at_seconds"] = int(time.time()) - 5
    path.write_text(json.dumps(data))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- a fake gateway, for answers the real one cannot be made to give -----------------------------


class FakeGateway:
    """/v1/auth/config, /v1/whoami and /v1/keys as the contract states them; tokens are checked by
    introspection at the stand-in. `requirement`, when set, is a Globus Auth requirements error
    that /v1/whoami answers with (401), as a gateway asks for a fresh, stronger sign-in."""

    def __init__(self, world: World, *, globus: bool = True) -> None:
        self.world = world
        self.requirement: dict[str, Any] | None = None
        self.keys: dict[str, dict[str, Any]] = {}
        app = FastAPI()
        config = {
            "client_id": world.native,
            "resource_server": world.rs.client_id,
            "scopes": [world.rs.scope],
            "required_policies": [world.policy],
        }
        app.get("/v1/auth/config")(lambda: {"object": "auth.config", "globus": config if globus else None})
        app.get("/v1/whoami")(self.whoami)
        app.post("/v1/keys", status_code=201)(self.create_key)
        app.get("/v1/keys")(self.list_keys)
        app.delete("/v1/keys/{key_id}")(self.revoke_key)
        self._server = ThreadedServer(app).start()
        self.port, self.url = self._server.port, self._server.url

    def stop(self) -> None:
        self._server.stop()

    def _caller(self, request: Request) -> dict[str, Any] | JSONResponse:
        token = request.headers.get("authorization", "").partition(" ")[2]
        info = self.world.introspect(token) if token else {"active": False}
        if not info["active"]:
            return error(401, "Your access token is invalid or expired.", "invalid_token")
        return info

    def whoami(self, request: Request) -> Any:
        if self.requirement is not None:
            return error(401, "This gateway needs a recent sign-in.", **self.requirement)
        info = self._caller(request)
        if isinstance(info, JSONResponse):
            return info
        return {
            "object": "whoami", "id": info["sub"], "username": info["username"], "name": info["name"],
            "email": info["email"], "identity_provider": None, "auth": "globus", "key_id": None,
            "is_admin": False, "linked_identities": [], "groups": [{"id": "g1", "name": "Inference users"}],
            "models": ["sim-model"], "clusters": ["local"],
        }  # fmt: skip

    async def create_key(self, request: Request) -> Any:
        info = self._caller(request)
        if isinstance(info, JSONResponse):
            return info
        body = await request.json()
        key_id = uuid.uuid4().hex[:12]
        self.keys[key_id] = {
            "object": "api_key", "id": key_id, "name": body["name"], "owner": info["sub"],
            "created_at": int(time.time()), "expires_at": body["expires_at"], "last_used_at": None,
            "revoked_at": None,
        }  # fmt: skip
        return {**self.keys[key_id], "key": f"hth_{key_id}_{'x' * 43}"}

    def list_keys(self, request: Request, all: bool = False) -> Any:
        info = self._caller(request)
        if isinstance(info, JSONResponse):
            return info
        if all:
            return error(403, "Only admins may list everyone's keys.", "admin_required")
        return {"object": "list", "data": [k for k in self.keys.values() if k["owner"] == info["sub"]]}

    def revoke_key(self, key_id: str, request: Request) -> Any:
        info = self._caller(request)
        if isinstance(info, JSONResponse):
            return info
        if key_id not in self.keys:
            return error(404, f"No API key `{key_id}`.", "key_not_found")
        del self.keys[key_id]
        return {"object": "api_key", "id": key_id, "deleted": True}


def error(status: int, message: str, code: str | None = None, **extra: Any) -> JSONResponse:
    body = {"message": message, "type": "authentication_error", "param": None, "code": code, **extra}
    return JSONResponse({"error": body}, status)


@pytest.fixture(scope="module")
def fake(world: World) -> Iterator[FakeGateway]:
    gw = FakeGateway(world)
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def real(logs: Path, sim: Sim, world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """`hearth serve` with Globus Auth: the stand-in, an authentication policy, Root as admin."""
    db = tmp_path_factory.mktemp("login-store") / "hearth.db"
    gw = start_gateway(
        logs,
        clusters={"local": {"upstreams": [upstream(sim, "sim")]}},
        store_url=f"sqlite:///{db}",
        auth={
            "key_cache_ttl_s": 0.5,
            "negative_cache_ttl_s": 0.5,
            "globus": {
                "client_id": world.rs.client_id,
                "client_secret": world.rs.secret,
                "native_client_id": world.native,
                "auth_url": world.globus.url + "/",
                "groups_url": world.globus.url + "/",
                "timeout_s": 3,
                "token_cache_ttl_s": 0.5,
                "negative_cache_ttl_s": 0.5,
            },
            "policy": {"required_policies": [world.policy], "admins": [world.admin.username]},
        },
    )
    yield gw
    gw.stop()


# --- sign in, token, refresh, sign out ----------------------------------------------------------


def test_login_token_refresh_logout(
    fake: FakeGateway, world: World, globus: GlobusAuthStandIn, config_dir: Path
) -> None:
    result = login(config_dir, globus, fake.url)
    assert ok(result).endswith(f"Signed in to {fake.url} as alice@anl.gov (Alice).\n")
    assert "Paste the authorization code: " in result.stdout
    (asked,) = globus.authorize_requests[-1:]
    assert asked["client_id"] == world.native
    assert asked["scope"] == world.rs.scope
    assert asked["access_type"] == "offline"
    assert asked["code_challenge_method"] == "S256"
    assert asked["prefill_named_grant"] == socket.gethostname()
    assert asked["session_required_policies"] == world.policy
    assert "prompt" not in asked
    assert globus.calls["authorization_code"] == 1

    # Kept privately, for the gateway's resource server.
    assert mode(config_dir) == 0o700
    assert mode(config_dir / "login.json") == 0o600
    saved = stored(config_dir)
    assert (saved["gateway"], saved["client_id"]) == (fake.url, world.native)
    tokens = saved["tokens"]
    assert (tokens["resource_server"], tokens["scope"]) == (world.rs.client_id, world.rs.scope)
    assert tokens["refresh_token"]
    assert tokens["expires_at_seconds"] > time.time() + 3600
    access, refresh = tokens["access_token"], tokens["refresh_token"]
    assert access not in result.stdout + result.stderr

    # `hearth token`: the token alone, no refresh while it is fresh.
    assert ok(hearth(config_dir, globus, "token")) == access + "\n"
    assert globus.calls["refresh_token"] == 0

    # Two days later: the token has expired, and is refreshed silently.
    globus.expire(access)
    age_tokens(config_dir)
    result = hearth(config_dir, globus, "token")
    new_access = ok(result).strip()
    assert result.stderr == ""
    assert new_access != access
    assert globus.calls["refresh_token"] == 1
    assert world.introspect(new_access)["active"] is True
    assert stored(config_dir)["tokens"]["access_token"] == new_access
    assert stored(config_dir)["tokens"]["refresh_token"] == refresh
    assert mode(config_dir / "login.json") == 0o600
    assert ok(hearth(config_dir, globus, "token")) == new_access + "\n"
    assert globus.calls["refresh_token"] == 1

    # Sign out: both tokens revoked, the file gone.
    result = hearth(config_dir, globus, "logout")
    assert ok(result) == f"Signed out of {fake.url}; the tokens on this machine are deleted.\n"
    assert globus.calls["revoke"] == 2
    assert world.introspect(new_access)["active"] is False
    assert not (config_dir / "login.json").exists()
    globus.reset_calls()
    result = hearth(config_dir, globus, "token")
    assert (result.returncode, result.stdout, result.stderr) == (2, "", NOT_LOGGED_IN)
    assert globus.calls["refresh_token"] == 0


def test_a_token_the_gateway_refuses_is_refreshed_once(
    fake: FakeGateway, globus: GlobusAuthStandIn, config_dir: Path
) -> None:
    """Globus ended the token early (the file still thinks it is valid): 401, refresh, retry."""
    ok(login(config_dir, globus, fake.url))
    globus.expire(stored(config_dir)["tokens"]["access_token"])
    result = hearth(config_dir, globus, "whoami", "--json")
    assert json.loads(ok(result))["username"] == "alice@anl.gov"
    assert globus.calls["refresh_token"] == 1


def test_revoked_refresh_token_is_an_expired_session(
    fake: FakeGateway, globus: GlobusAuthStandIn, config_dir: Path
) -> None:
    ok(login(config_dir, globus, fake.url))
    globus.revoke(stored(config_dir)["tokens"]["refresh_token"])
    age_tokens(config_dir)
    for command in ("token", "whoami"):
        result = hearth(config_dir, globus, command)
        assert (result.returncode, result.stdout) == (1, "")
        assert result.stderr == "error: session expired: run `hearth login`\n"


@pytest.mark.parametrize("failure", ["unreachable", "5xx"])
def test_logout_when_globus_fails(
    fake: FakeGateway, globus: GlobusAuthStandIn, config_dir: Path, failure: str
) -> None:
    ok(login(config_dir, globus, fake.url))
    globus.failure = failure  # type: ignore[assignment]
    result = hearth(config_dir, globus, "logout")
    assert ok(result).startswith("Signed out of")
    assert "warning: could not revoke the access token: Globus Auth" in result.stderr
    assert "warning: could not revoke the refresh token: Globus Auth" in result.stderr
    assert not (config_dir / "login.json").exists()


def test_refresh_when_globus_is_unreachable(
    fake: FakeGateway, globus: GlobusAuthStandIn, config_dir: Path
) -> None:
    ok(login(config_dir, globus, fake.url))
    age_tokens(config_dir)
    globus.failure = "unreachable"
    result = hearth(config_dir, globus, "token")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == "error: Globus Auth cannot be reached; try again later\n"
    assert (config_dir / "login.json").exists()  # nothing lost: try again later


def test_login_force_asks_to_sign_in_again(
    fake: FakeGateway, world: World, globus: GlobusAuthStandIn, config_dir: Path
) -> None:
    ok(login(config_dir, globus, fake.url, "--force"))
    asked = globus.authorize_requests[-1]
    assert asked["prompt"] == "login"
    assert asked["session_required_policies"] == world.policy


def test_login_with_a_wrong_code(fake: FakeGateway, globus: GlobusAuthStandIn, config_dir: Path) -> None:
    result = login(config_dir, globus, fake.url, code="not-the-code")
    assert result.returncode == 1
    assert result.stderr == "error: Globus refused the authorization code (invalid_grant)\n"
    assert not (config_dir / "login.json").exists()


def test_login_without_a_code(fake: FakeGateway, globus: GlobusAuthStandIn, config_dir: Path) -> None:
    proc = subprocess.run(
        [str(HEARTH), "login", "--gateway", fake.url, "--no-browser"],
        env=environment(config_dir, globus),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr == "error: no authorization code given\n"


def test_login_to_a_gateway_without_globus(world: World, globus: GlobusAuthStandIn, config_dir: Path) -> None:
    gw = FakeGateway(world, globus=False)
    try:
        result = hearth(config_dir, globus, "login", "--gateway", gw.url + "/v1/", "--no-browser")
    finally:
        gw.stop()
    assert result.returncode == 1
    assert result.stderr == (
        f"error: {gw.url} does not use Globus Auth; ask its administrators for an API key\n"
    )
    assert globus.calls["authorize"] == 0


def test_the_gateway_asks_for_a_fresh_sign_in(
    fake: FakeGateway, globus: GlobusAuthStandIn, config_dir: Path, world: World
) -> None:
    ok(login(config_dir, globus, fake.url))
    fake.requirement = {
        "code": "AuthorizationRequired",
        "authorization_parameters": {"session_required_policies": [world.policy], "prompt": "login"},
    }
    try:
        result = hearth(config_dir, globus, "whoami")
    finally:
        fake.requirement = None
    assert result.returncode == 1
    assert result.stderr == (
        "error: This gateway needs a recent sign-in. (run `hearth login --force` to sign in again)\n"
    )


# --- keys over the gateway ------------------------------------------------------------------


KEY = re.compile(r"^hth_[A-Za-z0-9]{12}_\S+$")


def test_keys_on_the_fake_gateway(fake: FakeGateway, globus: GlobusAuthStandIn, config_dir: Path) -> None:
    ok(login(config_dir, globus, fake.url))
    created = ok(hearth(config_dir, globus, "keys", "create", "--name", "ci", "--expires", "30d"))
    *_, key = created.splitlines()
    assert KEY.match(key)
    assert created.count(key) == 1
    assert "cannot be shown again" in created
    key_id = key.split("_")[1]
    (stored_key,) = fake.keys.values()
    assert stored_key["name"] == "ci"
    assert abs(stored_key["expires_at"] - (time.time() + 30 * 86400)) < 120

    listing = ok(hearth(config_dir, globus, "keys", "list"))
    assert key_id in listing
    assert "active" in listing
    assert key not in listing

    result = hearth(config_dir, globus, "keys", "list", "--all")
    assert (result.returncode, result.stderr) == (1, "error: Only admins may list everyone's keys.\n")

    assert ok(hearth(config_dir, globus, "keys", "revoke", key_id)) == f"Revoked {key_id}.\n"
    result = hearth(config_dir, globus, "keys", "revoke", key_id)
    assert (result.returncode, result.stderr) == (1, f"error: No API key `{key_id}`.\n")


def test_with_the_real_gateway(
    real: Gateway, world: World, globus: GlobusAuthStandIn, config_dir: Path, tmp_path: Path
) -> None:
    """Sign in to `hearth serve`, use the token and a self-made key with the OpenAI SDK, revoke."""
    result = login(config_dir, globus, real.url)  # the OpenAI base URL, …/v1, works too
    assert ok(result).endswith(f"Signed in to {real.root} as alice@anl.gov (Alice).\n")
    assert globus.authorize_requests[-1]["session_required_policies"] == world.policy

    who = json.loads(ok(hearth(config_dir, globus, "whoami", "--json")))
    assert (who["username"], who["auth"], who["is_admin"]) == ("alice@anl.gov", "globus", False)
    assert "alice@gmail.com" in {i["username"] for i in who["linked_identities"]}
    table = ok(hearth(config_dir, globus, "whoami"))
    assert "alice@anl.gov" in table
    assert stored(config_dir)["tokens"]["access_token"] not in table

    token = ok(hearth(config_dir, globus, "token")).strip()
    client = openai.OpenAI(base_url=real.url, api_key=token, max_retries=0)
    assert [m.id for m in client.models.list()]

    *_, key = ok(hearth(config_dir, globus, "keys", "create", "--name", "nightly")).splitlines()
    key_id = key.split("_")[1]
    keyed = openai.OpenAI(base_url=real.url, api_key=key, max_retries=0)
    assert [m.id for m in keyed.models.list()]
    assert key_id in ok(hearth(config_dir, globus, "keys", "list"))
    result = hearth(config_dir, globus, "keys", "list", "--all")
    assert (result.returncode, result.stderr) == (1, "error: Only admins may list everyone's keys.\n")
    assert ok(hearth(config_dir, globus, "keys", "revoke", key_id)) == f"Revoked {key_id}.\n"
    time.sleep(0.6)  # the gateway's key cache
    with pytest.raises(openai.AuthenticationError):
        keyed.models.list()

    ok(hearth(config_dir, globus, "keys", "create", "--name", "kept"))

    ok(hearth(config_dir, globus, "logout"))
    time.sleep(0.6)  # the gateway's token cache
    with pytest.raises(openai.AuthenticationError):
        client.models.list()

    # An admin lists everyone's keys, with their owners' usernames.
    admin_dir = tmp_path / "admin"
    globus.browser_user = world.admin
    ok(login(admin_dir, globus, real.url))
    listing = ok(hearth(admin_dir, globus, "keys", "list", "--all"))
    assert "alice@anl.gov" in listing
